//! Drives transactions to a final state: load, ask the engine, persist, call participants,
//! fold the answers in, repeat.
//!
//! A driver works only on transactions leased to its process. Every write is fenced by the
//! row's version and the lease owner ([`Store::save`]); a lost race means someone else owns
//! the transaction now, and this driver simply stops. Decisions are persisted *before* the
//! calls they lead to, so a crash at any instant resumes from a decision already on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dtx::{GlobalStatus, OpStatus};
use tokio::sync::{Semaphore, oneshot};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::clock::DbClock;
use crate::engine::{self, OpState, Outcome, TxState};
use crate::invoke::HttpInvoker;
use crate::invoke::http::BranchCall;
use crate::service::StoredOptions;
use crate::store::{
    AttemptRecord, GlobalRow, NewTransaction, OpRow, OpUpdate, Progress, Saved, Store, StoreError,
    implied_by_outcome,
};

/// Why a drive stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The store failed; the lease will expire and the poller will retry.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored options could not be read.
    #[error("options of {gid} unreadable: {detail}")]
    Options {
        /// The transaction.
        gid: String,
        /// The parse error.
        detail: String,
    },
}

/// Those waiting for transactions to become final (`wait_result`).
#[derive(Debug, Default)]
pub struct Waiters {
    waiting: Mutex<HashMap<String, Vec<oneshot::Sender<GlobalStatus>>>>,
}

impl Waiters {
    /// Registers interest in `gid`'s final status.
    pub fn subscribe(&self, gid: &str) -> oneshot::Receiver<GlobalStatus> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.entry(gid.to_owned()).or_default().push(tx);
        }
        rx
    }

    /// Drops a subscription that is no longer wanted (its receiver was dropped).
    pub fn prune(&self, gid: &str) {
        if let Ok(mut w) = self.waiting.lock()
            && let Some(list) = w.get_mut(gid)
        {
            list.retain(|s| !s.is_closed());
            if list.is_empty() {
                w.remove(gid);
            }
        }
    }

    fn notify(&self, gid: &str, status: GlobalStatus) {
        let senders = self.waiting.lock().ok().and_then(|mut w| w.remove(gid));
        for s in senders.into_iter().flatten() {
            let _ = s.send(status);
        }
    }
}

/// Tunables of the driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// This process's lease owner id.
    pub owner: String,
    /// Lease length (extended on every write).
    pub lease_ms: i64,
    /// Waits up to this long are slept through with the lease kept.
    pub inline_wait_ms: i64,
    /// Transactions driven at once.
    pub max_inflight: usize,
    /// Calls in flight at once per participant.
    pub target_limits: crate::invoke::http::TargetLimits,
    /// Publishes `kafka://` message steps (none: such steps wait, failing transiently).
    pub kafka: Option<crate::invoke::KafkaInvoker>,
    /// Keep every participant call in the attempt history. Off: a call that succeeds at
    /// an op's first attempt is not recorded on its own (the op's row already says it
    /// succeeded, when, after one call); failures, retries and the success ending them
    /// are recorded.
    pub record_all_calls: bool,
}

/// Drives transactions leased to this process.
pub struct Driver {
    store: Arc<dyn Store>,
    clock: Arc<DbClock>,
    invoker: HttpInvoker,
    config: DriverConfig,
    permits: Arc<Semaphore>,
    /// Transactions being driven by this process, each with whether it must be driven
    /// once more when its drive ends (it was claimed or handed to us again meanwhile).
    driving: Mutex<HashMap<String, bool>>,
    /// Set on shutdown: drives hand their transaction back at their next step.
    draining: std::sync::atomic::AtomicBool,
    /// Final-status notifications for `wait_result`.
    pub waiters: Waiters,
    metrics: Arc<crate::metrics::Metrics>,
}

/// In-memory copy of a transaction being driven.
struct Working {
    gid: String,
    version: i64,
    tx: TxState,
    ops: Vec<OpState>,
    rows: Vec<OpRow>,
    headers: BTreeMap<String, String>,
    traceparent: Option<String>,
    rollback_reason: Option<String>,
    /// When our lease runs out, as far as we know (database clock).
    lease_deadline: i64,
}

impl Driver {
    /// A driver over `store`, reporting to `metrics`.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<DbClock>,
        config: DriverConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_inflight.max(1)));
        Self {
            store,
            clock,
            invoker: HttpInvoker::new(config.target_limits.clone()),
            config,
            permits,
            driving: Mutex::default(),
            draining: false.into(),
            waiters: Waiters::default(),
            metrics,
        }
    }

    /// This process's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// This process's lease owner id.
    pub fn owner(&self) -> &str {
        &self.config.owner
    }

    /// The database's clock, estimated.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Lease length.
    pub fn lease_ms(&self) -> i64 {
        self.config.lease_ms
    }

    /// Drives `gid` in the background; it must be leased to this process already.
    pub fn spawn(self: &Arc<Self>, gid: String) {
        self.spawn_with(gid, None);
    }

    /// Drives a transaction this process has just inserted (leased to itself), from the
    /// inserted data: no read back from the database.
    pub fn spawn_new(
        self: &Arc<Self>,
        new: &NewTransaction,
        created_at: i64,
    ) -> Result<(), DriveError> {
        let rows = new
            .ops
            .iter()
            .map(|o| {
                let row = OpRow {
                    branch_id: o.branch_id.clone(),
                    op: o.op,
                    seq: o.seq,
                    target: o.target.clone(),
                    payload: o.payload.clone(),
                    status: OpStatus::Pending,
                    attempts: 0,
                    next_at: 0,
                    last_error: None,
                    retry_limit: o.retry_limit,
                    request_timeout_ms: o.request_timeout_ms,
                    updated_at: created_at,
                };
                (row, o.compensate.clone())
            })
            .collect();
        let rows = crate::store::with_deferred_compensations(rows);
        let row = GlobalRow {
            gid: new.gid.clone(),
            trans_type: new.trans_type,
            status: new.status,
            options: new.options.clone(),
            created_at,
            updated_at: created_at,
            finished_at: None,
            timeout_at: new.timeout_ms.map(|t| created_at + t),
            next_attempt_at: Some(created_at + new.first_look_ms),
            attempts: 0,
            lease_owner: new.lease.as_ref().map(|l| l.owner.clone()),
            lease_until: new.lease.as_ref().map(|l| created_at + l.ms),
            version: 1,
            needs_attention: None,
            rollback_reason: None,
        };
        let w = working(row, rows)?;
        self.spawn_with(new.gid.clone(), Some(w));
        Ok(())
    }

    fn spawn_with(self: &Arc<Self>, gid: String, known: Option<Working>) {
        // One drive per transaction in this process. A transaction claimed again while
        // its drive runs (an operator's action handed it back, say) is not driven twice
        // at once — two drives of one process share its lease, and could repeat each
        // other's calls — but once more, from the database, after the current drive.
        {
            let mut driving = self.driving.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(again) = driving.get_mut(&gid) {
                *again = true;
                return;
            }
            driving.insert(gid.clone(), false);
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let Ok(_permit) = this.permits.clone().acquire_owned().await else {
                this.driving
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&gid);
                return;
            };
            // The drive's future (its HTTP calls' state included) is several kilobytes:
            // boxed, it is allocated only once a slot is free, so that transactions queued
            // for a slot cost their data and not a drive's stack each.
            let mut known = known;
            loop {
                Box::pin(this.drive_spawned(gid.clone(), known.take())).await;
                let mut driving = this.driving.lock().unwrap_or_else(|e| e.into_inner());
                match driving.get_mut(&gid) {
                    Some(again) if *again => *again = false,
                    _ => {
                        driving.remove(&gid);
                        return;
                    }
                }
            }
        });
    }

    async fn drive_spawned(&self, gid: String, known: Option<Working>) {
        // Loaded before the span opens, so that the span continues the transaction's
        // trace (kept with it since its creation).
        let w = match known {
            Some(w) => w,
            None => match self.load(&gid).await {
                Ok(Some(w)) => w,
                Ok(None) => {
                    debug!(gid = %gid, "not leased to this process; leaving it");
                    return;
                }
                Err(e) => {
                    warn!(gid = %gid, error = %e, "cannot load a claimed transaction; the poller will resume it after the lease expires");
                    return;
                }
            },
        };
        let span = info_span!(
            "transaction",
            gid = %gid,
            trans_type = %w.tx.trans_type,
            status = %w.tx.status
        );
        crate::telemetry::set_parent(&span, w.traceparent.as_deref());
        if let Err(e) = self
            .drive_from(&gid, Some(w))
            .instrument(span.clone())
            .await
        {
            span.in_scope(|| warn!(error = %e, "drive interrupted; the poller will resume it after the lease expires"));
        }
    }

    /// Free driving slots (the worker pool's size minus the transactions being driven).
    pub fn available_permits(&self) -> usize {
        self.permits.available_permits()
    }

    /// Transactions being driven now.
    pub fn in_flight(&self) -> usize {
        self.config.max_inflight.max(1) - self.permits.available_permits()
    }

    /// Stops driving: each drive writes its progress and hands its transaction back
    /// (lease released, due at once) at its next step instead of going on.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    async fn load(&self, gid: &str) -> Result<Option<Working>, DriveError> {
        let Some((row, rows)) = self.store.load(gid).await? else {
            return Ok(None);
        };
        if row.lease_owner.as_deref() != Some(self.config.owner.as_str()) {
            return Ok(None);
        }
        Ok(Some(working(row, rows)?))
    }

    /// Drives `gid` until it is final, parked, waiting long, or no longer ours.
    pub async fn drive(&self, gid: &str) -> Result<(), DriveError> {
        self.drive_from(gid, None).await
    }

    async fn drive_from(&self, gid: &str, mut known: Option<Working>) -> Result<(), DriveError> {
        // A lost race with a writer that does not take leases (branch registration) is
        // retried from fresh state a few times; a lost lease ends the drive.
        for _ in 0..3 {
            let w = match known.take() {
                Some(w) => Some(w),
                None => self.load(gid).await?,
            };
            let Some(mut w) = w else {
                debug!("not leased to this process; leaving it");
                return Ok(());
            };
            match self.run(&mut w).await? {
                Some(()) => return Ok(()),
                None => continue,
            }
        }
        Ok(())
    }

    /// Returns `Ok(None)` when a write lost a race and the caller should reload.
    async fn run(&self, w: &mut Working) -> Result<Option<()>, DriveError> {
        let mut changed: BTreeSet<usize> = BTreeSet::new();
        let mut attempts: Vec<AttemptRecord> = Vec::new();
        let mut calls = 0;
        loop {
            let now = self.clock.now();
            let plan = engine::plan(&w.tx, &w.ops, now);
            let status_changed = plan.status != w.tx.status;
            let attention_changed = plan.attention != w.tx.needs_attention;
            if plan.rollback_reason.is_some() && w.rollback_reason.is_none() {
                w.rollback_reason.clone_from(&plan.rollback_reason);
            }
            // What happens after this write: keep driving (lease kept), or hand back.
            let wait = plan.wake_at.map(|t| (t - now).max(0));
            let draining = self.draining.load(std::sync::atomic::Ordering::Relaxed);
            let keep = !plan.status.is_final()
                && plan.attention.is_none()
                && !draining
                && (!plan.calls.is_empty()
                    || wait.is_some_and(|d| d <= self.config.inline_wait_ms));
            // Forward progress in the same direction (an action or confirm that succeeded,
            // followed by more calls) need not be written before those calls: if this
            // process dies, the next owner calls the succeeded ops again and the barrier
            // makes that a no-op. Every change of direction, failure, wait or release is
            // written before anything else happens, and the lease must outlast the calls.
            let lease_short = keep && w.lease_deadline - now < self.lease_for(w) / 2;
            let only_progress = !changed.is_empty()
                && changed
                    .iter()
                    .all(|&i| w.ops[i].status == OpStatus::Succeeded)
                && !status_changed
                && !attention_changed
                && !plan.calls.is_empty()
                && !lease_short;
            // A lease about to run out is extended by a write before calls that could
            // outlast it (a claim takes the configured lease, which a long request timeout
            // may exceed).
            let must_write = lease_short
                || ((status_changed || attention_changed || !changed.is_empty() || !keep)
                    && !only_progress);
            if must_write {
                let progress = Progress {
                    status: plan.status,
                    needs_attention: plan.attention.clone(),
                    rollback_reason: w.rollback_reason.clone(),
                    next_attempt_at: if plan.status.is_final() || plan.attention.is_some() {
                        None
                    } else if keep || !plan.calls.is_empty() {
                        // Ours while the lease holds; due for the poller once it lapses (or
                        // at once, when a draining process hands it back).
                        Some(now)
                    } else {
                        plan.wake_at
                    },
                    ops: changed
                        .iter()
                        .map(|&i| op_update(&w.ops[i]))
                        .filter(|u| {
                            let action_called = w.ops.iter().any(|o| {
                                o.op == dtx::Op::Action
                                    && o.branch_id == u.branch_id
                                    && o.attempts > 0
                            });
                            !implied_by_outcome(w.tx.trans_type, plan.status, u, action_called)
                        })
                        .collect(),
                    calls: std::mem::take(&mut calls),
                    attempts: std::mem::take(&mut attempts),
                    lease_ms: keep.then(|| self.lease_for(w)),
                };
                match self
                    .store
                    .save(&w.gid, &self.config.owner, w.version, &progress)
                    .await?
                {
                    Saved::Ok(v) => {
                        w.version = v;
                        w.lease_deadline = now + progress.lease_ms.unwrap_or(0);
                    }
                    Saved::Conflict => {
                        self.metrics.lease_conflict();
                        debug!("write lost a race; reloading");
                        return Ok(None);
                    }
                }
                changed.clear();
                if status_changed {
                    info!(from = %w.tx.status, to = %plan.status, reason = plan.rollback_reason.as_deref().unwrap_or(""), "status changed");
                }
                if let Some(reason) = plan.attention.as_deref().filter(|_| attention_changed) {
                    self.metrics.flagged(w.tx.trans_type);
                    warn!(reason, "needs attention: automatic retries stopped");
                }
                if status_changed && plan.status.is_final() {
                    self.metrics.finished(
                        w.tx.trans_type,
                        plan.status,
                        (now - w.tx.created_at) as f64 / 1000.0,
                    );
                }
                w.tx.status = plan.status;
                w.tx.needs_attention = plan.attention.clone();
                if plan.status.is_final() {
                    self.waiters.notify(&w.gid, plan.status);
                }
            }
            if !keep {
                return Ok(Some(()));
            }
            if plan.calls.is_empty() {
                let d = wait.unwrap_or(0).max(1);
                tokio::time::sleep(Duration::from_millis(d as u64)).await;
                continue;
            }
            // The rest of the due calls wait for the next round.
            let width = match w.tx.policy.max_parallel_calls {
                0 => plan.calls.len(),
                n => plan.calls.len().min(n as usize),
            };
            let outcomes = self.call_all(w, &plan.calls[..width]).await;
            let now = self.clock.now();
            for (i, outcome, started_at, elapsed) in outcomes {
                let duration_ms = elapsed.as_millis() as i64;
                let op = &mut w.ops[i];
                log_outcome(op, &outcome, duration_ms);
                engine::apply_outcome(op, &outcome, now, &w.tx.policy, fastrand::f64());
                changed.insert(i);
                let (label, error) = match &outcome {
                    Outcome::Success => ("success", None),
                    Outcome::Failure(e) => ("failure", Some(e.clone())),
                    Outcome::Ongoing => ("ongoing", None),
                    Outcome::Transient(e) => ("transient", Some(e.clone())),
                };
                self.metrics
                    .attempt(op.op, label, &w.rows[i].target, elapsed.as_secs_f64());
                calls += 1;
                if matches!(outcome, Outcome::Success)
                    && op.attempts == 1
                    && !self.config.record_all_calls
                {
                    continue;
                }
                attempts.push(AttemptRecord {
                    branch_id: op.branch_id.clone(),
                    op: op.op,
                    started_at,
                    duration_ms,
                    outcome: label,
                    error,
                });
            }
        }
    }

    /// The lease to take on a write: it must outlast what may come before the next write
    /// (the slowest call, or an inline sleep), plus a margin.
    fn lease_for(&self, w: &Working) -> i64 {
        self.lease_covering(
            w.rows
                .iter()
                .map(|r| {
                    r.request_timeout_ms
                        .unwrap_or(w.tx.policy.request_timeout_ms as i64)
                })
                .max()
                .unwrap_or(0),
        )
    }

    /// A lease long enough for calls of up to `slowest_call_ms`.
    pub fn lease_covering(&self, slowest_call_ms: i64) -> i64 {
        self.config
            .lease_ms
            .max(slowest_call_ms.max(self.config.inline_wait_ms) + 1_000)
    }

    async fn call_all(&self, w: &Working, calls: &[usize]) -> Vec<(usize, Outcome, i64, Duration)> {
        let futures = calls.iter().map(|&i| {
            let row = &w.rows[i];
            // Debug level: with no trace export and the default log level the span is not
            // made at all (it costs memory per call in flight); the export layer takes it.
            let span = tracing::debug_span!(
                "branch_call",
                branch_id = %row.branch_id,
                op = %row.op,
                url = %row.target,
                otel.kind = "client",
                outcome = tracing::field::Empty,
            );
            let traceparent =
                crate::telemetry::outgoing_traceparent(&span, w.traceparent.as_deref());
            let timeout = row
                .request_timeout_ms
                .map_or(w.tx.policy.request_timeout_ms, |t| t as u64);
            async move {
                let call = BranchCall {
                    gid: &w.gid,
                    trans_type: w.tx.trans_type,
                    branch_id: &row.branch_id,
                    op: row.op,
                    target: &row.target,
                    payload: &row.payload,
                    headers: &w.headers,
                    traceparent: traceparent.as_deref(),
                    timeout: Duration::from_millis(timeout),
                };
                let started_at = self.clock.now();
                let t0 = Instant::now();
                let outcome = if row.target.starts_with("kafka://") {
                    match &self.config.kafka {
                        Some(k) => k.publish(&call).instrument(span.clone()).await,
                        None => Outcome::Transient(
                            "no Kafka brokers configured (DTX_KAFKA_BROKERS)".into(),
                        ),
                    }
                } else {
                    self.invoker.call(&call).instrument(span.clone()).await
                };
                span.record(
                    "outcome",
                    match &outcome {
                        Outcome::Success => "success",
                        Outcome::Failure(_) => "failure",
                        Outcome::Ongoing => "ongoing",
                        Outcome::Transient(_) => "transient",
                    },
                );
                (i, outcome, started_at, t0.elapsed())
            }
        });
        futures_util::future::join_all(futures).await
    }
}

fn log_outcome(op: &OpState, outcome: &Outcome, duration_ms: i64) {
    match outcome {
        Outcome::Success => {
            debug!(branch_id = %op.branch_id, op = %op.op, duration_ms, "branch op succeeded")
        }
        Outcome::Failure(e) => {
            info!(branch_id = %op.branch_id, op = %op.op, duration_ms, error = %e, "branch op answered FAILURE")
        }
        Outcome::Ongoing => {
            debug!(branch_id = %op.branch_id, op = %op.op, duration_ms, "branch op ongoing")
        }
        Outcome::Transient(e) => {
            info!(branch_id = %op.branch_id, op = %op.op, duration_ms, attempt = op.attempts + 1, error = %e, "branch op failed transiently; will retry")
        }
    }
}

fn op_update(op: &OpState) -> OpUpdate {
    OpUpdate {
        branch_id: op.branch_id.clone(),
        op: op.op,
        status: op.status,
        attempts: op.attempts as i64,
        next_at: op.next_at,
        last_error: op.last_error.clone(),
    }
}

fn working(row: GlobalRow, rows: Vec<OpRow>) -> Result<Working, DriveError> {
    let options: StoredOptions =
        serde_json::from_str(&row.options).map_err(|e| DriveError::Options {
            gid: row.gid.clone(),
            detail: e.to_string(),
        })?;
    let ops = rows
        .iter()
        .map(|r| OpState {
            branch_id: r.branch_id.clone(),
            op: r.op,
            seq: r.seq as u32,
            status: r.status,
            attempts: r.attempts as u32,
            next_at: r.next_at,
            last_error: r.last_error.clone(),
            retry_limit: r.retry_limit.map(|l| l as u32),
        })
        .collect();
    Ok(Working {
        tx: TxState {
            trans_type: row.trans_type,
            status: row.status,
            created_at: row.created_at,
            timeout_at: row.timeout_at,
            needs_attention: row.needs_attention,
            policy: options.policy,
            saga_after: options.saga_after,
        },
        gid: row.gid,
        version: row.version,
        ops,
        rows,
        headers: options.branch_headers,
        traceparent: options.traceparent,
        rollback_reason: row.rollback_reason,
        lease_deadline: row.lease_until.unwrap_or(0),
    })
}
