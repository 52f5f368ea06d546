//! The operations of the coordinator, shared by the native and the DTM-compatible APIs:
//! validation of what comes in, the store writes that accept it, and the hand-off to the
//! driver. The APIs only translate shapes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dtx::api::TxOptions;
use dtx::{GlobalStatus, Op, TransType};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::config::Config;
use crate::driver::Driver;
use crate::engine::Policy;
use crate::store::{
    Added, GlobalRow, Inserted, Lease, ListFilter, NewOp, NewTransaction, OpRow, Store, StoreError,
};

/// What is stored in a transaction's `options` column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOptions {
    /// Resolved retry and timeout rules.
    pub policy: Policy,
    /// Headers sent with every branch call.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub branch_headers: BTreeMap<String, String>,
    /// Saga: for each step, the steps it waits for (`None`: sequential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_after: Option<Vec<Vec<usize>>>,
    /// W3C trace context the transaction's drives continue (the initiator's, or made up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Opaque data of a DTM client, returned by `query`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<String>,
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; `field` names the culprit.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No transaction with that gid.
    #[error("no transaction with gid `{0}`")]
    NotFound(String),
    /// The transaction's state does not allow the operation.
    #[error("{0}")]
    Conflict(String),
    /// The store is unavailable; the request was most likely not stored (retry it with the
    /// same gid: repeats are idempotent).
    #[error("storage unavailable; retry with the same gid: {0}")]
    Store(#[from] StoreError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// One saga step, as both APIs deliver it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepSpec {
    /// Action URL.
    pub action: String,
    /// Compensation URL (none: nothing to undo).
    pub compensate: Option<String>,
    /// Request body.
    pub payload: Vec<u8>,
    /// Steps this one waits for (concurrent sagas).
    pub after: Vec<usize>,
    /// Per-step retry limit.
    pub retry_limit: Option<u32>,
    /// Per-step request timeout.
    pub request_timeout_ms: Option<u64>,
}

/// A saga to submit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SagaSpec {
    /// The gid (minted when absent).
    pub gid: Option<String>,
    /// Steps.
    pub steps: Vec<StepSpec>,
    /// Whether `after` lists apply (else sequential).
    pub concurrent: bool,
    /// Options.
    pub options: TxOptions,
    /// Opaque client data.
    pub custom_data: Option<String>,
}

/// A half message (or, unprepared, a reliable message) to store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MsgSpec {
    /// The gid (minted when absent).
    pub gid: Option<String>,
    /// Steps, delivered in order: `http://...` or `kafka://TOPIC[?key=KEY]`.
    pub steps: Vec<StepSpec>,
    /// Where to check back with the initiator (needed by a prepared message).
    pub query_prepared: Option<String>,
    /// Options.
    pub options: TxOptions,
    /// Opaque client data.
    pub custom_data: Option<String>,
    /// Deliver no sooner than this (ms from now; messages submitted at once only).
    pub delay_ms: Option<u64>,
}

/// A TCC branch to register.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BranchSpec {
    /// Branch id.
    pub branch_id: String,
    /// Confirm URL (empty: nothing to confirm).
    pub confirm: String,
    /// Cancel URL (empty: nothing to cancel).
    pub cancel: String,
    /// XA: the phase-2 URL, called with `op=commit` or `op=rollback`.
    pub url: String,
    /// Body for confirm and cancel.
    pub payload: Vec<u8>,
}

/// What moving a transaction did.
enum Moved {
    /// Moved now; the receiver tells its final status.
    Now(tokio::sync::oneshot::Receiver<GlobalStatus>),
    /// Moved now; nobody waits.
    Started(GlobalStatus),
    /// It was there already (an idempotent repeat).
    Already(GlobalStatus),
}

/// The coordinator's operations.
pub struct Coordinator {
    store: Arc<dyn Store>,
    driver: Arc<Driver>,
    config: Config,
}

impl Coordinator {
    /// Operations over `store`, driving with `driver`.
    pub fn new(store: Arc<dyn Store>, driver: Arc<Driver>, config: Config) -> Self {
        Self {
            store,
            driver,
            config,
        }
    }

    /// The database's clock (an estimate re-synced every few seconds), ms.
    pub fn now(&self) -> i64 {
        self.driver.now()
    }

    /// This process's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        self.driver.metrics()
    }

    /// Transactions this process is driving now.
    pub fn driving(&self) -> usize {
        self.driver.in_flight()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A fresh, time-ordered gid (UUIDv7).
    pub fn new_gid(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// The lease the accepting process takes: long enough for the transaction's slowest
    /// call, so that nobody else claims it while that call is in flight.
    fn lease(&self, slowest_call_ms: u64) -> Lease {
        Lease {
            owner: self.driver.owner().to_owned(),
            ms: self.driver.lease_covering(slowest_call_ms as i64),
        }
    }

    fn gid_or_new(&self, gid: Option<String>) -> Result<String, ServiceError> {
        match gid {
            Some(g) if !g.is_empty() => {
                dtx::validate_gid(&g).map_err(|m| invalid("gid", m))?;
                Ok(g)
            }
            _ => Ok(self.new_gid()),
        }
    }

    fn stored_options(
        &self,
        o: &TxOptions,
        saga_after: Option<Vec<Vec<usize>>>,
        custom_data: Option<String>,
    ) -> Result<String, ServiceError> {
        validate_options(o)?;
        let stored = StoredOptions {
            policy: self.config.defaults.policy(o),
            branch_headers: o.branch_headers.clone(),
            saga_after,
            custom_data,
            traceparent: Some(
                crate::telemetry::request_traceparent()
                    .unwrap_or_else(crate::telemetry::new_traceparent),
            ),
        };
        serde_json::to_string(&stored).map_err(|e| invalid("options", e.to_string()))
    }

    /// Checks that a saga or message has between 1 and `max_branches` steps.
    fn check_step_count(&self, n: usize, kind: &str) -> Result<usize, ServiceError> {
        if n == 0 {
            return Err(invalid(
                "steps",
                format!("a {kind} needs at least one step"),
            ));
        }
        if n > self.config.max_branches {
            return Err(invalid(
                "steps",
                format!(
                    "{n} steps; at most {} are allowed",
                    self.config.max_branches
                ),
            ));
        }
        Ok(n)
    }

    /// Submits a saga: stored durably, then driven at once by this process. With `wait`,
    /// answers when it is final (or the configured wait passed).
    pub async fn submit_saga(
        &self,
        spec: SagaSpec,
        wait: bool,
    ) -> Result<(String, GlobalStatus), ServiceError> {
        let gid = self.gid_or_new(spec.gid)?;
        let n = self.check_step_count(spec.steps.len(), "saga")?;
        let mut ops = Vec::with_capacity(n);
        for (i, step) in spec.steps.iter().enumerate() {
            let branch_id = format!("{:02}", i + 1);
            validate_url(&format!("steps[{i}].action"), &step.action)?;
            let compensate = step.compensate.as_deref().filter(|c| !c.is_empty());
            if let Some(c) = compensate {
                validate_url(&format!("steps[{i}].compensate"), c)?;
            }
            // The compensation rides on the action's row until it is needed.
            ops.push(NewOp {
                branch_id,
                op: Op::Action,
                seq: i as i64,
                target: step.action.clone(),
                payload: step.payload.clone(),
                retry_limit: step.retry_limit.map(i64::from),
                request_timeout_ms: step.request_timeout_ms.map(|t| t as i64),
                compensate: compensate.map(str::to_owned),
            });
            if let Some(t) = step.request_timeout_ms {
                validate_timeout(&format!("steps[{i}].request_timeout_ms"), t)?;
            }
        }
        let saga_after = if spec.concurrent {
            let after: Vec<Vec<usize>> = spec.steps.iter().map(|s| s.after.clone()).collect();
            validate_dag(&after)?;
            Some(after)
        } else {
            if let Some(i) = spec.steps.iter().position(|s| !s.after.is_empty()) {
                return Err(invalid(
                    format!("steps[{i}].after"),
                    "dependencies need `concurrent: true`",
                ));
            }
            None
        };
        let options = self.stored_options(&spec.options, saga_after, spec.custom_data)?;
        let default_timeout = spec
            .options
            .request_timeout_ms
            .unwrap_or(self.config.defaults.request_timeout_ms);
        let slowest = spec
            .steps
            .iter()
            .map(|s| s.request_timeout_ms.unwrap_or(default_timeout))
            .max()
            .unwrap_or(0);
        let new = NewTransaction {
            gid: gid.clone(),
            trans_type: TransType::Saga,
            status: GlobalStatus::Submitted,
            options,
            timeout_ms: spec.options.timeout_to_fail_ms.map(|t| t as i64),
            first_look_ms: 0,
            lease: Some(self.lease(slowest)),
            ops,
        };
        let created_at = self.driver.now();
        match self.store.insert(&new).await? {
            Inserted::Created { .. } => {
                self.metrics().started(TransType::Saga);
                debug!(gid = %gid, steps = n, "saga submitted");
                self.drive_new(&new, created_at, wait).await
            }
            Inserted::Exists(row) if row.trans_type == TransType::Saga => {
                let status = if wait && !row.status.is_final() {
                    self.wait_final(&gid).await?
                } else {
                    row.status
                };
                Ok((gid, status))
            }
            Inserted::Exists(row) => Err(ServiceError::Conflict(format!(
                "gid `{gid}` is already used by a {} transaction",
                row.trans_type
            ))),
        }
    }

    /// Stores a message: `prepared` (invisible until submit, abort or a check-back after
    /// its timeout) or submitted at once (delivered now). Idempotent per gid.
    pub async fn put_msg(
        &self,
        spec: MsgSpec,
        prepared: bool,
        wait: bool,
    ) -> Result<(String, GlobalStatus), ServiceError> {
        let gid = self.gid_or_new(spec.gid)?;
        let n = self.check_step_count(spec.steps.len(), "message")?;
        let delay = spec.delay_ms.unwrap_or(0);
        if delay > 0 && prepared {
            return Err(invalid(
                "delay_ms",
                "a prepared message is delivered when submitted; delay applies to messages submitted at once",
            ));
        }
        if delay > 7 * 86_400_000 {
            return Err(invalid("delay_ms", "at most 7 days"));
        }
        let query_prepared = spec.query_prepared.filter(|q| !q.is_empty());
        match &query_prepared {
            Some(q) => validate_url("query_prepared", q)?,
            None if prepared => {
                return Err(invalid(
                    "query_prepared",
                    "a prepared message needs a URL to check back with the initiator",
                ));
            }
            None => {}
        }
        let mut ops = Vec::with_capacity(n + 1);
        if let Some(q) = &query_prepared {
            ops.push(NewOp {
                branch_id: crate::engine::msg::CHECK_BACK_BRANCH.into(),
                op: Op::Msg,
                seq: 0,
                target: q.clone(),
                payload: Vec::new(),
                retry_limit: None,
                request_timeout_ms: None,
                compensate: None,
            });
        }
        for (i, step) in spec.steps.iter().enumerate() {
            let field = format!("steps[{i}].action");
            if step.action.starts_with("kafka:") {
                crate::invoke::kafka::parse_target(&step.action).map_err(|m| invalid(&field, m))?;
                if self.kafka_brokers().is_none() {
                    return Err(invalid(
                        field,
                        "kafka:// steps need the coordinator's DTX_KAFKA_BROKERS to be set",
                    ));
                }
            } else {
                validate_url(&field, &step.action)?;
            }
            if step.compensate.as_deref().is_some_and(|c| !c.is_empty()) {
                return Err(invalid(
                    format!("steps[{i}].compensate"),
                    "a message's steps are not compensated (delivery is at-least-once)",
                ));
            }
            if let Some(t) = step.request_timeout_ms {
                validate_timeout(&format!("steps[{i}].request_timeout_ms"), t)?;
            }
            ops.push(NewOp {
                branch_id: format!("{:02}", i + 1),
                op: Op::Action,
                seq: i as i64,
                target: step.action.clone(),
                payload: step.payload.clone(),
                retry_limit: step.retry_limit.map(i64::from),
                request_timeout_ms: step.request_timeout_ms.map(|t| t as i64),
                compensate: None,
            });
        }
        let options = self.stored_options(&spec.options, None, spec.custom_data)?;
        let timeout = spec
            .options
            .timeout_to_fail_ms
            .unwrap_or(self.config.defaults.tcc_timeout_to_fail_ms) as i64;
        let slowest = spec
            .options
            .request_timeout_ms
            .unwrap_or(self.config.defaults.request_timeout_ms);
        let new = NewTransaction {
            gid: gid.clone(),
            trans_type: TransType::Msg,
            status: if prepared {
                GlobalStatus::Prepared
            } else {
                GlobalStatus::Submitted
            },
            options,
            timeout_ms: prepared.then_some(timeout),
            // A delayed message is left to the poller until its time comes.
            first_look_ms: if prepared { timeout } else { delay as i64 },
            lease: (!prepared && delay == 0).then(|| self.lease(slowest)),
            ops,
        };
        let created_at = self.driver.now();
        match self.store.insert(&new).await? {
            Inserted::Created { .. } => {
                self.metrics().started(TransType::Msg);
                info!(gid = %gid, steps = n, prepared, "message stored");
                if prepared {
                    return Ok((gid, GlobalStatus::Prepared));
                }
                if delay > 0 {
                    return Ok((gid, GlobalStatus::Submitted));
                }
                self.drive_new(&new, created_at, wait).await
            }
            // The same message again (a client's retry): prepare is idempotent; a submit
            // of a prepared one submits it.
            Inserted::Exists(row) if row.trans_type == TransType::Msg => {
                if !prepared && row.status == GlobalStatus::Prepared {
                    let status = self.submit(&gid, wait).await?;
                    Ok((gid, status))
                } else if wait && !prepared && !row.status.is_final() {
                    Ok((gid.clone(), self.wait_final(&gid).await?))
                } else {
                    Ok((gid, row.status))
                }
            }
            Inserted::Exists(row) => Err(ServiceError::Conflict(format!(
                "gid `{gid}` is already used by a {} transaction",
                row.trans_type
            ))),
        }
    }

    /// Drives a just-inserted, submitted transaction at once; with `wait`, answers when
    /// it is final (or the configured wait passed).
    async fn drive_new(
        &self,
        new: &NewTransaction,
        created_at: i64,
        wait: bool,
    ) -> Result<(String, GlobalStatus), ServiceError> {
        let gid = new.gid.clone();
        // Subscribed before the drive starts, so that its end cannot be missed.
        let waiter = wait.then(|| self.driver.waiters.subscribe(&gid));
        self.driver
            .spawn_new(new, created_at)
            .map_err(|e| ServiceError::Conflict(e.to_string()))?;
        match waiter {
            Some(rx) => {
                let status = self
                    .wait_on(&gid, rx, Some(GlobalStatus::Submitted))
                    .await?;
                Ok((gid, status))
            }
            None => Ok((gid, GlobalStatus::Submitted)),
        }
    }

    /// The Kafka brokers this coordinator publishes to, if configured.
    pub fn kafka_brokers(&self) -> Option<&str> {
        self.config
            .kafka_brokers
            .as_deref()
            .filter(|b| !b.is_empty())
    }

    /// Prepares a TCC transaction; it is aborted if not submitted within its timeout.
    pub async fn prepare(
        &self,
        gid: Option<String>,
        trans_type: TransType,
        o: &TxOptions,
        custom_data: Option<String>,
    ) -> Result<(String, GlobalStatus), ServiceError> {
        if !matches!(trans_type, TransType::Tcc | TransType::Xa) {
            return Err(invalid(
                "trans_type",
                format!(
                    "prepare is for tcc and xa transactions (got {trans_type}); submit a saga directly"
                ),
            ));
        }
        let gid = self.gid_or_new(gid)?;
        let timeout = o
            .timeout_to_fail_ms
            .unwrap_or(self.config.defaults.tcc_timeout_to_fail_ms) as i64;
        let new = NewTransaction {
            gid: gid.clone(),
            trans_type,
            status: GlobalStatus::Prepared,
            options: self.stored_options(o, None, custom_data)?,
            timeout_ms: Some(timeout),
            // Nothing to drive until the timeout: the poller looks then.
            first_look_ms: timeout,
            lease: None,
            ops: Vec::new(),
        };
        match self.store.insert(&new).await? {
            Inserted::Created { .. } => {
                self.metrics().started(trans_type);
                info!(gid = %gid, %trans_type, timeout_ms = timeout, "prepared");
                Ok((gid, GlobalStatus::Prepared))
            }
            Inserted::Exists(row)
                if row.trans_type == trans_type && row.status == GlobalStatus::Prepared =>
            {
                Ok((gid, row.status))
            }
            Inserted::Exists(row) => Err(ServiceError::Conflict(format!(
                "gid `{gid}` exists already as a {} transaction that is {}",
                row.trans_type, row.status
            ))),
        }
    }

    /// Registers a TCC branch; refused once the transaction has left `prepared`.
    pub async fn register_branch(&self, gid: &str, b: BranchSpec) -> Result<(), ServiceError> {
        dtx::validate_gid(gid).map_err(|m| invalid("gid", m))?;
        dtx::validate_branch_id(&b.branch_id).map_err(|m| invalid("branch_id", m))?;
        let Some((row, existing)) = self.store.load(gid).await? else {
            return Err(ServiceError::NotFound(gid.to_owned()));
        };
        // TCC branches name their confirm and cancel; an XA branch names one phase-2 URL
        // that gets both `commit` and `rollback`.
        let targets: Vec<(Op, &str, &String)> = match row.trans_type {
            TransType::Xa => {
                if b.url.is_empty() {
                    return Err(invalid("url", "an xa branch needs its phase-2 url"));
                }
                vec![(Op::Commit, "url", &b.url), (Op::Rollback, "url", &b.url)]
            }
            _ => vec![
                (Op::Confirm, "confirm", &b.confirm),
                (Op::Cancel, "cancel", &b.cancel),
            ],
        };
        let mut ops = Vec::new();
        for (op, field, url) in targets {
            if url.is_empty() {
                continue;
            }
            validate_url(field, url)?;
            ops.push(NewOp {
                branch_id: b.branch_id.clone(),
                op,
                seq: 0,
                target: url.clone(),
                payload: b.payload.clone(),
                retry_limit: None,
                request_timeout_ms: None,
                compensate: None,
            });
        }
        let count = existing.len();
        if count + ops.len() > 2 * self.config.max_branches {
            return Err(invalid(
                "branch_id",
                format!(
                    "at most {} branches per transaction",
                    self.config.max_branches
                ),
            ));
        }
        match self.store.add_ops(gid, &ops).await? {
            Added::Added(_) => Ok(()),
            Added::NotFound => Err(ServiceError::NotFound(gid.to_owned())),
            Added::NotPrepared(status) => Err(ServiceError::Conflict(format!(
                "transaction `{gid}` is {status}; branches can be registered only while it is prepared"
            ))),
        }
    }

    /// Submits a prepared transaction (phase 2 commit); idempotent. With `wait`, answers
    /// when it is final (or the configured wait passed).
    pub async fn submit(&self, gid: &str, wait: bool) -> Result<GlobalStatus, ServiceError> {
        self.finish(gid, GlobalStatus::Submitted, None, wait).await
    }

    /// Aborts a prepared transaction (phase 2 rollback); idempotent.
    pub async fn abort(
        &self,
        gid: &str,
        reason: Option<String>,
        wait: bool,
    ) -> Result<GlobalStatus, ServiceError> {
        let reason = reason.unwrap_or_else(|| "aborted by the initiator".into());
        self.finish(gid, GlobalStatus::Aborting, Some(reason), wait)
            .await
    }

    async fn finish(
        &self,
        gid: &str,
        to: GlobalStatus,
        reason: Option<String>,
        wait: bool,
    ) -> Result<GlobalStatus, ServiceError> {
        match self.move_to(gid, to, reason, wait).await? {
            Moved::Now(rx) => self.wait_on(gid, rx, Some(to)).await,
            Moved::Already(s) if wait && !s.is_final() => self.wait_final(gid).await,
            Moved::Already(s) | Moved::Started(s) => Ok(s),
        }
    }

    async fn move_to(
        &self,
        gid: &str,
        to: GlobalStatus,
        reason: Option<String>,
        wait: bool,
    ) -> Result<Moved, ServiceError> {
        dtx::validate_gid(gid).map_err(|m| invalid("gid", m))?;
        for _ in 0..3 {
            let Some((row, _)) = self.store.load(gid).await? else {
                return Err(ServiceError::NotFound(gid.to_owned()));
            };
            let verb = if to == GlobalStatus::Submitted {
                "submit"
            } else {
                "abort"
            };
            match (row.trans_type, row.status, to) {
                (TransType::Tcc | TransType::Xa | TransType::Msg, GlobalStatus::Prepared, _) => {
                    if let Some(_version) = self
                        .store
                        .transition(
                            gid,
                            GlobalStatus::Prepared,
                            to,
                            &self.lease(
                                serde_json::from_str::<StoredOptions>(&row.options)
                                    .map_or(self.config.defaults.request_timeout_ms, |o| {
                                        o.policy.request_timeout_ms
                                    }),
                            ),
                            reason.as_deref(),
                        )
                        .await?
                    {
                        info!(gid, to = %to, "{verb} accepted");
                        let waiter = wait.then(|| self.driver.waiters.subscribe(gid));
                        self.driver.spawn(gid.to_owned());
                        return Ok(match waiter {
                            Some(rx) => Moved::Now(rx),
                            None => Moved::Started(to),
                        });
                    }
                    // Moved under us (timeout or a concurrent call): decide on fresh state.
                }
                (
                    TransType::Tcc | TransType::Xa | TransType::Msg,
                    GlobalStatus::Submitted | GlobalStatus::Succeeded,
                    GlobalStatus::Submitted,
                )
                | (
                    TransType::Tcc | TransType::Xa | TransType::Msg,
                    GlobalStatus::Aborting | GlobalStatus::Failed,
                    GlobalStatus::Aborting,
                ) => return Ok(Moved::Already(row.status)),
                (TransType::Saga, status, GlobalStatus::Submitted) => {
                    return Ok(Moved::Already(status));
                }
                (TransType::Saga, _, _) => {
                    return Err(ServiceError::Conflict(format!(
                        "transaction `{gid}` is a saga: it rolls back by itself when a step fails or its timeout passes"
                    )));
                }
                (_, status, _) => {
                    return Err(ServiceError::Conflict(format!(
                        "cannot {verb} transaction `{gid}`: it is {status}"
                    )));
                }
            }
        }
        Err(ServiceError::Conflict(format!(
            "transaction `{gid}` is changing concurrently; try again"
        )))
    }

    /// Waits until `gid` is final or the configured wait passes; returns its status then.
    pub async fn wait_final(&self, gid: &str) -> Result<GlobalStatus, ServiceError> {
        let rx = self.driver.waiters.subscribe(gid);
        self.wait_on(gid, rx, None).await
    }

    /// Waits on a subscription made earlier. `known` is the status already known (no
    /// need to read it); the database is read only every 250 ms, for transactions that
    /// another process finishes.
    async fn wait_on(
        &self,
        gid: &str,
        mut rx: tokio::sync::oneshot::Receiver<GlobalStatus>,
        mut known: Option<GlobalStatus>,
    ) -> Result<GlobalStatus, ServiceError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.wait_result_timeout_ms);
        let result = loop {
            let status = match known.take() {
                Some(s) => s,
                None => match self.store.load(gid).await? {
                    Some((row, _)) => row.status,
                    None => break Err(ServiceError::NotFound(gid.to_owned())),
                },
            };
            if status.is_final() || tokio::time::Instant::now() >= deadline {
                break Ok(status);
            }
            // Notified at once when this process finishes it; polled when another does.
            let nap = tokio::time::sleep(Duration::from_millis(250));
            tokio::select! {
                got = &mut rx => if let Ok(s) = got { break Ok(s) } else { rx = self.driver.waiters.subscribe(gid) },
                _ = nap => {}
            }
        };
        drop(rx);
        self.driver.waiters.prune(gid);
        result
    }

    /// A transaction with its branch ops.
    pub async fn query(&self, gid: &str) -> Result<(GlobalRow, Vec<OpRow>), ServiceError> {
        dtx::validate_gid(gid).map_err(|m| invalid("gid", m))?;
        self.store
            .load(gid)
            .await?
            .ok_or_else(|| ServiceError::NotFound(gid.to_owned()))
    }

    /// A page of transactions, newest first.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<GlobalRow>, ServiceError> {
        Ok(self.store.list(filter).await?)
    }
}

const MAX_TIMEOUT_MS: u64 = 10 * 60 * 1000;

fn validate_timeout(field: &str, ms: u64) -> Result<(), ServiceError> {
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        return Err(invalid(
            field,
            format!("must be between 1 and {MAX_TIMEOUT_MS} ms"),
        ));
    }
    Ok(())
}

fn validate_options(o: &TxOptions) -> Result<(), ServiceError> {
    if let Some(t) = o.request_timeout_ms {
        validate_timeout("options.request_timeout_ms", t)?;
    }
    if o.retry_interval_ms == Some(0) {
        return Err(invalid(
            "options.retry_interval_ms",
            "must be at least 1 ms",
        ));
    }
    if o.retry_limit == Some(0) {
        return Err(invalid("options.retry_limit", "must be at least 1"));
    }
    if o.timeout_to_fail_ms == Some(0) {
        return Err(invalid(
            "options.timeout_to_fail_ms",
            "must be at least 1 ms",
        ));
    }
    if o.branch_headers.len() > 32 {
        return Err(invalid("options.branch_headers", "at most 32 headers"));
    }
    for (k, v) in &o.branch_headers {
        if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(invalid(
                "options.branch_headers",
                format!("`{k}` is not a valid header name"),
            ));
        }
        if reqwest::header::HeaderValue::from_str(v).is_err() {
            return Err(invalid(
                "options.branch_headers",
                format!("the value of `{k}` is not a valid header value"),
            ));
        }
    }
    Ok(())
}

/// Targets must be absolute http(s) URLs.
fn validate_url(field: &str, url: &str) -> Result<(), ServiceError> {
    /// URLs found valid already: every submit names its steps' URLs, usually the same few
    /// (parsing each cost ~2% of the coordinator's CPU under load). Bounded: past 1024
    /// distinct URLs it starts over.
    static VALID: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::LazyLock::new(Default::default);
    if url.len() > 2048 {
        return Err(invalid(field, "URL longer than 2048 bytes"));
    }
    let mut valid = VALID.lock().unwrap_or_else(|e| e.into_inner());
    if valid.contains(url) {
        return Ok(());
    }
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" && u.host().is_some() => {
            if valid.len() >= 1024 {
                valid.clear();
            }
            valid.insert(url.to_owned());
            Ok(())
        }
        Ok(u) if u.scheme() == "https" => Err(invalid(
            field,
            "https targets are not supported by this build yet; use http (e.g. behind a local proxy)",
        )),
        Ok(u) => Err(invalid(
            field,
            format!("unsupported scheme `{}`; use http://", u.scheme()),
        )),
        Err(e) => Err(invalid(field, format!("`{url}` is not a URL: {e}"))),
    }
}

/// Dependencies must name other steps and form no cycle.
fn validate_dag(after: &[Vec<usize>]) -> Result<(), ServiceError> {
    let n = after.len();
    for (i, deps) in after.iter().enumerate() {
        if let Some(&d) = deps.iter().find(|&&d| d >= n || d == i) {
            return Err(invalid(
                format!("steps[{i}].after"),
                format!("{d} is not another step (0..{n})"),
            ));
        }
    }
    // Kahn's algorithm: a cycle leaves steps that never become ready.
    let mut indegree: Vec<usize> = after.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut seen = 0;
    while let Some(s) = ready.pop() {
        seen += 1;
        for (t, deps) in after.iter().enumerate() {
            for _ in deps.iter().filter(|&&d| d == s) {
                indegree[t] -= 1;
                if indegree[t] == 0 {
                    ready.push(t);
                }
            }
        }
    }
    if seen < n {
        return Err(invalid("steps", "the `after` dependencies form a cycle"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dag_validation() {
        assert!(validate_dag(&[vec![], vec![0], vec![0, 1]]).is_ok());
        assert!(validate_dag(&[vec![1], vec![0]]).is_err());
        assert!(validate_dag(&[vec![0]]).is_err());
        assert!(validate_dag(&[vec![], vec![5]]).is_err());
        assert!(validate_dag(&[vec![], vec![0, 0]]).is_ok());
    }

    #[test]
    fn url_validation() {
        assert!(validate_url("f", "http://127.0.0.1:8080/a?x=1").is_ok());
        assert!(validate_url("f", "ftp://x/").is_err());
        assert!(validate_url("f", "not a url").is_err());
        assert!(validate_url("f", "https://x/").is_err());
    }
}
