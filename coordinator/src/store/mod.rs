//! Durable storage of global transactions, behind one trait with one implementation per
//! backend: [`sqlite`] (the embedded default), [`postgres`] (production; several
//! coordinators may share it) and [`mysql`] (MySQL 8 / MariaDB 10.6+).
//!
//! Rules every backend keeps (DESIGN §6):
//! - every state change by a driver is a compare-and-swap on `version` *and* on the lease
//!   owner, so a process whose lease was taken over cannot overwrite the new owner's work;
//! - times are the database's clock, in milliseconds since the Unix epoch (UTC);
//! - a transaction and its branch ops are inserted in one database transaction, before the
//!   submit is acknowledged and before any participant is called.

pub mod group;
pub mod mysql;
pub mod postgres;
mod sql;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use dtx::{GlobalStatus, Op, OpStatus, TransType};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database answered with an error or could not be reached.
    #[error("database error during {context}: {source}")]
    Database {
        /// What the store was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be understood (a newer schema, or a hand edit).
    #[error("stored data of {gid} is unreadable: {detail}")]
    Corrupt {
        /// The transaction concerned.
        gid: String,
        /// What did not parse.
        detail: String,
    },
    /// A batch this write was part of failed (group commit); nothing of it was written.
    #[error("batched write failed: {0}")]
    Batch(String),
    /// The database URL names no supported backend.
    #[error("unsupported database URL `{0}`: use sqlite://PATH, postgres://... or mysql://...")]
    UnsupportedUrl(String),
}

/// Adds what the store was doing to a driver error.
pub(crate) trait Context<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Database { context, source })
    }
}

/// A stored global transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalRow {
    /// The gid.
    pub gid: String,
    /// Mode.
    pub trans_type: TransType,
    /// Status.
    pub status: GlobalStatus,
    /// Options and layout as JSON (see [`crate::service::StoredOptions`]).
    pub options: String,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// When it became final.
    pub finished_at: Option<i64>,
    /// When `timeout_to_fail` passes.
    pub timeout_at: Option<i64>,
    /// When the poller should look at it (NULL: final or parked).
    pub next_attempt_at: Option<i64>,
    /// Participant calls made so far, all branches together.
    pub attempts: i64,
    /// The process driving it now.
    pub lease_owner: Option<String>,
    /// Until when the lease holds.
    pub lease_until: Option<i64>,
    /// Compare-and-swap version.
    pub version: i64,
    /// Why it waits for an operator.
    pub needs_attention: Option<String>,
    /// Why it was rolled back.
    pub rollback_reason: Option<String>,
}

/// A stored branch op.
#[derive(Debug, Clone, PartialEq)]
pub struct OpRow {
    /// Branch id.
    pub branch_id: String,
    /// Which op.
    pub op: Op,
    /// Saga step index or TCC registration order.
    pub seq: i64,
    /// URL to call.
    pub target: String,
    /// Request body.
    pub payload: Vec<u8>,
    /// Status.
    pub status: OpStatus,
    /// Calls made.
    pub attempts: i64,
    /// Earliest next call.
    pub next_at: i64,
    /// Last error.
    pub last_error: Option<String>,
    /// Per-op retry limit.
    pub retry_limit: Option<i64>,
    /// Per-op request timeout.
    pub request_timeout_ms: Option<i64>,
    /// Last change.
    pub updated_at: i64,
}

/// A branch op to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOp {
    /// Branch id.
    pub branch_id: String,
    /// Which op.
    pub op: Op,
    /// Saga step index or TCC registration order.
    pub seq: i64,
    /// URL to call.
    pub target: String,
    /// Request body.
    pub payload: Vec<u8>,
    /// Per-op retry limit.
    pub retry_limit: Option<i64>,
    /// Per-op request timeout.
    pub request_timeout_ms: Option<i64>,
    /// On a saga action: the URL of its compensation. The compensation op is kept on the
    /// action's row (same payload, retry limit and timeout) and gets a row of its own only
    /// when it is first written — most sagas never compensate (see
    /// [`with_deferred_compensations`]).
    pub compensate: Option<String>,
}

/// The pending compensation op that a saga action's row stands for until the op is first
/// written: the store inserts its row then, from the action's row (the first save that
/// carries it, or an operator action on the transaction).
fn deferred_compensation(action: &OpRow, target: String) -> OpRow {
    OpRow {
        branch_id: action.branch_id.clone(),
        op: Op::Compensate,
        seq: action.seq,
        target,
        payload: action.payload.clone(),
        status: dtx::OpStatus::Pending,
        attempts: 0,
        next_at: 0,
        last_error: None,
        retry_limit: action.retry_limit,
        request_timeout_ms: action.request_timeout_ms,
        updated_at: action.updated_at,
    }
}

/// Branch rows as stored (each with its action's deferred compensation target, if any)
/// to the ops they stand for, in the same order (a compensation right after its action).
pub fn with_deferred_compensations(rows: Vec<(OpRow, Option<String>)>) -> Vec<OpRow> {
    let stored: std::collections::HashSet<(String, Op)> = rows
        .iter()
        .map(|(r, _)| (r.branch_id.clone(), r.op))
        .collect();
    let mut ops = Vec::with_capacity(rows.len() * 2);
    for (row, compensate) in rows {
        let deferred = compensate
            .filter(|_| !stored.contains(&(row.branch_id.clone(), Op::Compensate)))
            .map(|target| deferred_compensation(&row, target));
        ops.push(row);
        ops.extend(deferred);
    }
    ops
}

/// Whether a saga's final save may leave out this op update: an op that succeeded at its
/// first call, in a saga whose final status implies it —
/// - `succeeded`: an action (every action succeeded);
/// - `failed`: the compensation of an action that was called (`action_called`: its row
///   shows a call once this save is written). Every step whose action may have run is
///   compensated before a saga fails.
///
/// Its row then still holds what it held before its call (`pending`, no call, no error;
/// a compensation may have no row yet), and any other outcome of a call is written, so
/// in such a saga that row can mean nothing else: [`imply_first_call_successes`] reads it
/// back as this update. Most sagas end at the first try, and their final save then
/// writes the global row alone.
pub fn implied_by_outcome(
    trans_type: TransType,
    status: GlobalStatus,
    op: &OpUpdate,
    action_called: bool,
) -> bool {
    let implied = match (status, op.op) {
        (GlobalStatus::Succeeded, Op::Action) => true,
        (GlobalStatus::Failed, Op::Compensate) => action_called,
        _ => false,
    };
    implied
        && trans_type == TransType::Saga
        && op.status == OpStatus::Succeeded
        && op.attempts == 1
        && op.last_error.is_none()
}

/// The read side of [`implied_by_outcome`]: in a succeeded saga, an action row still as
/// submitted is the action that succeeded at its first call; in a failed saga, so is a
/// compensation not called yet by its row whose action was called.
pub fn imply_first_call_successes(global: &GlobalRow, ops: &mut [OpRow]) {
    if global.trans_type != TransType::Saga {
        return;
    }
    let implied_op = match global.status {
        GlobalStatus::Succeeded => Op::Action,
        GlobalStatus::Failed => Op::Compensate,
        _ => return,
    };
    let called: std::collections::HashSet<String> = ops
        .iter()
        .filter(|o| o.op == Op::Action && o.attempts > 0)
        .map(|o| o.branch_id.clone())
        .collect();
    let at = global.finished_at.unwrap_or(global.updated_at);
    for op in ops.iter_mut() {
        let untouched =
            op.status == OpStatus::Pending && op.attempts == 0 && op.last_error.is_none();
        if untouched
            && op.op == implied_op
            && (implied_op == Op::Action || called.contains(&op.branch_id))
        {
            op.status = OpStatus::Succeeded;
            op.attempts = 1;
            op.updated_at = at;
        }
    }
}

/// A transaction to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTransaction {
    /// The gid.
    pub gid: String,
    /// Mode.
    pub trans_type: TransType,
    /// Initial status (`submitted` for a saga, `prepared` for a TCC).
    pub status: GlobalStatus,
    /// Options JSON.
    pub options: String,
    /// `timeout_to_fail`, from now, if it applies.
    pub timeout_ms: Option<i64>,
    /// When the poller should first look, from now (0: at once, for recovery if the
    /// accepting process dies).
    pub first_look_ms: i64,
    /// The lease the accepting process takes to drive it at once.
    pub lease: Option<Lease>,
    /// Branch ops known at creation (saga steps).
    pub ops: Vec<NewOp>,
}

/// A lease to take: who and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The owner (the process id of a coordinator).
    pub owner: String,
    /// Duration from the database's now.
    pub ms: i64,
}

/// The answer to an insert.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// Created, at this version.
    Created {
        /// The new row's version.
        version: i64,
    },
    /// A transaction with that gid exists already.
    Exists(Box<GlobalRow>),
}

/// The answer to adding branches to a prepared transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Added {
    /// Added this many new ops (0: all were there already).
    Added(u64),
    /// No such transaction.
    NotFound,
    /// The transaction has left `prepared`.
    NotPrepared(GlobalStatus),
}

/// An op's new state after calls.
#[derive(Debug, Clone, PartialEq)]
pub struct OpUpdate {
    /// Branch id.
    pub branch_id: String,
    /// Which op.
    pub op: Op,
    /// New status.
    pub status: OpStatus,
    /// Calls made.
    pub attempts: i64,
    /// Earliest next call.
    pub next_at: i64,
    /// Last error.
    pub last_error: Option<String>,
}

/// One participant call, for the history table.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// Branch id.
    pub branch_id: String,
    /// Which op.
    pub op: Op,
    /// When the call started (database clock).
    pub started_at: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// `success`, `failure`, `ongoing` or `transient`.
    pub outcome: &'static str,
    /// Error detail, if any.
    pub error: Option<String>,
}

/// What a driver persists after a round of calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// New status.
    pub status: GlobalStatus,
    /// Attention flag to set (or keep).
    pub needs_attention: Option<String>,
    /// Rollback reason, kept only if none is stored yet.
    pub rollback_reason: Option<String>,
    /// When the poller should look next (NULL: final or parked).
    pub next_attempt_at: Option<i64>,
    /// Ops changed by the round.
    pub ops: Vec<OpUpdate>,
    /// Participant calls made since the last write (added to the transaction's count).
    pub calls: i64,
    /// The calls among them kept in the attempt history (see
    /// [`crate::driver::DriverConfig::record_all_calls`]).
    pub attempts: Vec<AttemptRecord>,
    /// `Some(ms)`: extend the lease by `ms` from now; `None`: release it.
    pub lease_ms: Option<i64>,
}

/// The answer to a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Written; the row is now at this version.
    Ok(i64),
    /// The row changed under us (another writer, or our lease was taken over).
    Conflict,
}

/// One save of a batch (see [`Store::write_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SaveRequest {
    /// The transaction.
    pub gid: String,
    /// The lease owner writing.
    pub owner: String,
    /// The version it read.
    pub version: i64,
    /// What to write.
    pub progress: Progress,
}

/// What an operator can do to a transaction (each is audited). Every action clears
/// `needs_attention`, releases the lease (fencing off a driver still at work) and makes the
/// transaction due at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorAction {
    /// Give every pending op a fresh retry budget, make failed phase-2 ops pending again,
    /// and have the transaction driven at once.
    RetryNow,
    /// The same for one branch op only.
    RetryOp {
        /// The branch.
        branch_id: String,
        /// The op.
        op: Op,
    },
    /// Move a prepared transaction (or a submitted saga) to `aborting`: the coordinator
    /// then runs the compensations / cancels / rollbacks.
    ForceAbort,
    /// Record a pending (or failed phase-2) op as succeeded without calling it: the
    /// operator says its effect happened (or was done by hand).
    MarkDone {
        /// The branch.
        branch_id: String,
        /// The op.
        op: Op,
    },
    /// Change the retry budget of the transaction (and of its ops that carry their own).
    SetBudget {
        /// New calls-per-op limit.
        retry_limit: Option<u32>,
        /// New age limit.
        max_age_ms: Option<u64>,
    },
}

impl OperatorAction {
    /// Its name in the audit log.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::RetryNow => "retry_now",
            Self::RetryOp { .. } => "retry_op",
            Self::ForceAbort => "force_abort",
            Self::MarkDone { .. } => "mark_done",
            Self::SetBudget { .. } => "set_budget",
        }
    }

    /// What the action was applied to, beyond the transaction, for the audit log.
    pub fn detail(&self) -> Option<String> {
        match self {
            Self::RetryOp { branch_id, op } | Self::MarkDone { branch_id, op } => {
                Some(format!("{branch_id}/{op}"))
            }
            Self::SetBudget {
                retry_limit,
                max_age_ms,
            } => Some(
                [
                    retry_limit.map(|l| format!("retry_limit={l}")),
                    max_age_ms.map(|a| format!("max_age_ms={a}")),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
            ),
            Self::RetryNow | Self::ForceAbort => None,
        }
    }

    /// The branch op it concerns, if any.
    pub fn target_op(&self) -> Option<(&str, Op)> {
        match self {
            Self::RetryOp { branch_id, op } | Self::MarkDone { branch_id, op } => {
                Some((branch_id, *op))
            }
            _ => None,
        }
    }

    /// Whether the action is allowed on a transaction in `status` of mode `trans_type`.
    pub fn allowed(&self, status: GlobalStatus, trans_type: TransType) -> bool {
        match self {
            Self::ForceAbort => {
                matches!(status, GlobalStatus::Prepared | GlobalStatus::Aborting)
                    || (status == GlobalStatus::Submitted && trans_type == TransType::Saga)
            }
            _ => !status.is_final(),
        }
    }
}

/// The answer to an operator action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operated {
    /// Done; the transaction is now in this status.
    Done(GlobalStatus),
    /// No such transaction.
    NotFound,
    /// Not allowed in this status (final, or a submitted TCC/XA that must confirm).
    Refused(GlobalStatus, TransType),
    /// The transaction has no such branch op, or the op is in a state the action does not
    /// apply to (shown as its status).
    NoSuchOp(Option<OpStatus>),
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// When (DB clock, ms).
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Why.
    pub reason: String,
    /// The branch op or the values concerned, if any.
    pub detail: Option<String>,
}

/// One participant call from the history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    /// Branch id.
    pub branch_id: String,
    /// Which op.
    pub op: String,
    /// When the call started (DB clock, ms).
    pub started_at: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// `success`, `failure`, `ongoing` or `transient`.
    pub outcome: String,
    /// Error detail.
    pub error: Option<String>,
    /// The coordinator process that made the call.
    pub owner: String,
}

/// Transactions per status and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCount {
    /// Status.
    pub status: GlobalStatus,
    /// Mode.
    pub trans_type: TransType,
    /// How many.
    pub count: i64,
}

/// Transactions that became final in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinuteBucket {
    /// Start of the minute (ms since the Unix epoch).
    pub minute: i64,
    /// Succeeded in it.
    pub succeeded: i64,
    /// Failed (rolled back) in it.
    pub failed: i64,
}

/// What the dashboard's overview shows: counts, and what is stuck, worst first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Overview {
    /// Counts by status and mode.
    pub counts: Vec<StatusCount>,
    /// Waiting for an operator, oldest first (at most 20).
    pub needs_attention: Vec<GlobalRow>,
    /// Not final, with an op whose last call failed, oldest first (at most 20).
    pub retrying: Vec<GlobalRow>,
    /// Not final, oldest first (at most 20).
    pub oldest: Vec<GlobalRow>,
    /// Final per minute over the last hour (minutes with none are absent).
    pub finished: Vec<MinuteBucket>,
}

/// Figures for the metrics gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gauges {
    /// Transactions not final.
    pub in_flight: i64,
    /// Of those, waiting for an operator.
    pub needs_attention: i64,
    /// Creation time of the oldest one not final.
    pub oldest_created_at: Option<i64>,
}

/// Filter of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<GlobalStatus>,
    /// Only this mode.
    pub trans_type: Option<TransType>,
    /// Only those flagged (true) or not flagged (false).
    pub needs_attention: Option<bool>,
    /// Only gids starting with this.
    pub gid_prefix: Option<String>,
    /// Only transactions with a branch op calling this participant (`host` or `host:port`).
    pub host: Option<String>,
    /// Only transactions created before this time (ms): "older than".
    pub created_before: Option<i64>,
    /// Keyset cursor: rows strictly older than `(created_at, gid)`.
    pub before: Option<(i64, String)>,
    /// Page size.
    pub limit: i64,
}

/// Durable storage of transactions. One implementation per backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`, for logs.
    fn backend(&self) -> &'static str;
    /// Applies the backend's migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// The database's clock, ms since the Unix epoch.
    async fn now(&self) -> Result<i64, StoreError>;
    /// Inserts a transaction with its ops, unless the gid exists.
    async fn insert(&self, tx: &NewTransaction) -> Result<Inserted, StoreError>;
    /// Reads a transaction and its ops (ordered by seq, branch, op), with the first-call
    /// successes its final status implies filled in (see [`imply_first_call_successes`]).
    async fn load(&self, gid: &str) -> Result<Option<(GlobalRow, Vec<OpRow>)>, StoreError>;
    /// Adds the ops of one branch to a transaction that is still `prepared`; they get the
    /// next registration order (`seq`), whatever the ops say.
    async fn add_ops(&self, gid: &str, ops: &[NewOp]) -> Result<Added, StoreError>;
    /// Moves a transaction from `from` to `to` (initiator's submit/abort), taking the lease
    /// for `lease`. Returns the new version, or `None` if it was not in `from`.
    async fn transition(
        &self,
        gid: &str,
        from: GlobalStatus,
        to: GlobalStatus,
        lease: &Lease,
        rollback_reason: Option<&str>,
    ) -> Result<Option<i64>, StoreError>;
    /// Persists a driver's progress if the row is still at `version` and leased to `owner`.
    async fn save(
        &self,
        gid: &str,
        owner: &str,
        version: i64,
        progress: &Progress,
    ) -> Result<Saved, StoreError>;
    /// Writes several inserts and saves with as few commits as the backend allows (group
    /// commit); each answer is the one [`Store::insert`] / [`Store::save`] would give.
    /// The default writes them one by one.
    async fn write_batch(
        &self,
        inserts: &[NewTransaction],
        saves: &[SaveRequest],
    ) -> Result<(Vec<Inserted>, Vec<Saved>), StoreError> {
        let mut ins = Vec::with_capacity(inserts.len());
        for tx in inserts {
            ins.push(self.insert(tx).await?);
        }
        let mut sav = Vec::with_capacity(saves.len());
        for s in saves {
            sav.push(self.save(&s.gid, &s.owner, s.version, &s.progress).await?);
        }
        Ok((ins, sav))
    }
    /// Takes the lease of up to `limit` transactions that are due and not leased.
    async fn claim_due(&self, lease: &Lease, limit: i64) -> Result<Vec<String>, StoreError>;
    /// Releases every lease `owner` holds on a non-final transaction (graceful shutdown):
    /// the transactions become claimable at once, and the owner's later writes are refused.
    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError>;
    /// Carries out an operator action and records it in the audit log, in one database
    /// transaction. The lease is released: a driver still working on it is fenced off and
    /// the poller takes it up at once.
    async fn operate(
        &self,
        gid: &str,
        action: &OperatorAction,
        actor: &str,
        reason: &str,
    ) -> Result<Operated, StoreError>;
    /// The audit log of a transaction, oldest first.
    async fn audit(&self, gid: &str) -> Result<Vec<AuditRow>, StoreError>;
    /// Lists transactions, newest first.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<GlobalRow>, StoreError>;
    /// The call history of a transaction, oldest first (at most 1000 calls).
    async fn attempts(&self, gid: &str) -> Result<Vec<AttemptRow>, StoreError>;
    /// Counts and the stuck transactions, for the dashboard; `now` is the database clock.
    async fn overview(&self, now: i64) -> Result<Overview, StoreError>;
    /// Figures for the metrics gauges.
    async fn gauges(&self) -> Result<Gauges, StoreError>;
}

/// Escapes `%`, `_` and the escape character `!` for a `LIKE ... ESCAPE '!'` pattern
/// (`!`, because MySQL reads a backslash in a literal as an escape of its own).
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(c);
    }
    out
}

/// Builds the listing query of every backend (the builder writes each one's placeholders).
pub(crate) fn list_query<DB>(f: &ListFilter) -> sqlx::QueryBuilder<DB>
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut qb = sqlx::QueryBuilder::<DB>::new("SELECT * FROM dtx_global WHERE 1 = 1");
    if let Some(s) = f.status {
        qb.push(" AND status = ").push_bind(s.as_str().to_owned());
    }
    if let Some(t) = f.trans_type {
        qb.push(" AND trans_type = ")
            .push_bind(t.as_str().to_owned());
    }
    match f.needs_attention {
        Some(true) => {
            qb.push(" AND needs_attention IS NOT NULL");
        }
        Some(false) => {
            qb.push(" AND needs_attention IS NULL");
        }
        None => {}
    }
    if let Some(p) = f.gid_prefix.as_deref().filter(|p| !p.is_empty()) {
        qb.push(" AND gid LIKE ")
            .push_bind(format!("{}%", like_escape(p)))
            .push(" ESCAPE '!'");
    }
    if let Some(at) = f.created_before {
        qb.push(" AND created_at < ").push_bind(at);
    }
    if let Some(h) = f.host.as_deref().filter(|h| !h.is_empty()) {
        // `scheme://HOST` then the end, a port or a path: a host that is a prefix of
        // another (10.0.0.1 and 10.0.0.12) does not match it.
        let h = like_escape(h);
        // A saga action's row also names its compensation's host.
        qb.push(" AND EXISTS (SELECT 1 FROM dtx_branch b WHERE b.gid = dtx_global.gid AND (");
        for (i, column) in ["b.target", "b.compensate"].into_iter().enumerate() {
            if i > 0 {
                qb.push(" OR ");
            }
            qb.push(column)
                .push(" LIKE ")
                .push_bind(format!("%://{h}"))
                .push(" ESCAPE '!' OR ")
                .push(column)
                .push(" LIKE ")
                .push_bind(format!("%://{h}:%"))
                .push(" ESCAPE '!' OR ")
                .push(column)
                .push(" LIKE ")
                .push_bind(format!("%://{h}/%"))
                .push(" ESCAPE '!'");
        }
        qb.push("))");
    }
    if let Some((at, gid)) = &f.before {
        // `created_at <= at` first: a bound the `(created_at, gid)` index can start from
        // (an OR alone makes the planner walk from the newest row: 325 ms deep into a
        // million rows on PostgreSQL, against 1 ms this way).
        qb.push(" AND created_at <= ")
            .push_bind(*at)
            .push(" AND (created_at < ")
            .push_bind(*at)
            .push(" OR gid < ")
            .push_bind(gid.clone())
            .push(")");
    }
    qb.push(" ORDER BY created_at DESC, gid DESC LIMIT ")
        .push_bind(f.limit);
    qb
}

/// Opens the store named by a URL (`sqlite://PATH`, `postgres://...`), creating an SQLite
/// file if missing. Migrations are not run here.
pub async fn connect(url: &str, max_connections: u32) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(
            postgres::PgStore::connect(url, max_connections).await?,
        ))
    } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        let url = url.replacen("mariadb:", "mysql:", 1);
        Ok(Arc::new(
            mysql::MySqlStore::connect(&url, max_connections).await?,
        ))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

fn parse<T: std::str::FromStr>(gid: &str, value: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| StoreError::Corrupt {
        gid: gid.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(branch_id: &str, op: Op, status: OpStatus) -> OpRow {
        OpRow {
            branch_id: branch_id.into(),
            op,
            seq: branch_id.parse::<i64>().unwrap() - 1,
            target: format!("http://p/{branch_id}/{op}"),
            payload: branch_id.as_bytes().to_vec(),
            status,
            attempts: 1,
            next_at: 5,
            last_error: None,
            retry_limit: Some(3),
            request_timeout_ms: Some(700),
            updated_at: 42,
        }
    }

    #[test]
    fn a_deferred_compensation_follows_its_action_with_its_settings() {
        let ops = with_deferred_compensations(vec![
            (
                row("01", Op::Action, OpStatus::Succeeded),
                Some("http://p/01/undo".into()),
            ),
            (row("02", Op::Action, OpStatus::Pending), None),
        ]);
        let listed: Vec<(&str, Op)> = ops.iter().map(|o| (o.branch_id.as_str(), o.op)).collect();
        assert_eq!(
            listed,
            [
                ("01", Op::Action),
                ("01", Op::Compensate),
                ("02", Op::Action)
            ]
        );
        let comp = &ops[1];
        assert_eq!(comp.target, "http://p/01/undo");
        assert_eq!(comp.payload, b"01");
        assert_eq!(comp.seq, 0);
        assert_eq!(
            (comp.status, comp.attempts, comp.next_at),
            (OpStatus::Pending, 0, 0)
        );
        assert_eq!(
            (comp.retry_limit, comp.request_timeout_ms),
            (Some(3), Some(700))
        );
    }

    fn global(trans_type: TransType, status: GlobalStatus) -> GlobalRow {
        GlobalRow {
            gid: "g".into(),
            trans_type,
            status,
            options: "{}".into(),
            created_at: 1,
            updated_at: 9,
            finished_at: Some(9),
            timeout_at: None,
            next_attempt_at: None,
            attempts: 2,
            lease_owner: None,
            lease_until: None,
            version: 3,
            needs_attention: None,
            rollback_reason: None,
        }
    }

    fn update(op: Op, status: OpStatus, attempts: i64, last_error: Option<&str>) -> OpUpdate {
        OpUpdate {
            branch_id: "01".into(),
            op,
            status,
            attempts,
            next_at: 0,
            last_error: last_error.map(Into::into),
        }
    }

    #[test]
    fn only_a_first_call_success_that_the_final_status_implies_is_left_unwritten() {
        let implied =
            |status, op: &OpUpdate, called| implied_by_outcome(TransType::Saga, status, op, called);
        let first = update(Op::Action, OpStatus::Succeeded, 1, None);
        assert!(implied(GlobalStatus::Succeeded, &first, true));
        // Another mode or status, a retried or failed call, an unrelated op: written.
        assert!(!implied_by_outcome(
            TransType::Tcc,
            GlobalStatus::Succeeded,
            &first,
            true
        ));
        assert!(!implied(GlobalStatus::Submitted, &first, true));
        assert!(!implied(GlobalStatus::Aborting, &first, true));
        assert!(!implied(GlobalStatus::Failed, &first, true));
        for other in [
            update(Op::Action, OpStatus::Succeeded, 2, None),
            update(Op::Action, OpStatus::Succeeded, 1, Some("timed out")),
            update(Op::Action, OpStatus::Failed, 1, None),
            update(Op::Compensate, OpStatus::Succeeded, 1, None),
        ] {
            assert!(!implied(GlobalStatus::Succeeded, &other, true), "{other:?}");
        }
        // A failed saga implies the compensations of its actions that were called.
        let undo = update(Op::Compensate, OpStatus::Succeeded, 1, None);
        assert!(implied(GlobalStatus::Failed, &undo, true));
        assert!(!implied(GlobalStatus::Failed, &undo, false));
        assert!(!implied(GlobalStatus::Aborting, &undo, true));
        let retried = update(Op::Compensate, OpStatus::Succeeded, 2, None);
        assert!(!implied(GlobalStatus::Failed, &retried, true));
    }

    #[test]
    fn a_succeeded_sagas_untouched_action_rows_read_as_first_call_successes() {
        let submitted = |op| {
            let mut r = row("01", op, OpStatus::Pending);
            r.attempts = 0;
            r
        };
        let mut retried = row("02", Op::Action, OpStatus::Succeeded);
        retried.attempts = 3;
        let stored = vec![submitted(Op::Action), retried.clone()];

        let mut ops = stored.clone();
        imply_first_call_successes(&global(TransType::Saga, GlobalStatus::Succeeded), &mut ops);
        assert_eq!(
            (ops[0].status, ops[0].attempts, ops[0].updated_at),
            (OpStatus::Succeeded, 1, 9)
        );
        assert_eq!(ops[1], retried);

        // Nothing is implied before the end, in another mode, or for a compensation.
        for g in [
            global(TransType::Saga, GlobalStatus::Submitted),
            global(TransType::Saga, GlobalStatus::Failed),
            global(TransType::Tcc, GlobalStatus::Succeeded),
        ] {
            let mut ops = stored.clone();
            imply_first_call_successes(&g, &mut ops);
            assert_eq!(ops, stored);
        }
        let mut comp = vec![submitted(Op::Compensate)];
        imply_first_call_successes(&global(TransType::Saga, GlobalStatus::Succeeded), &mut comp);
        assert_eq!(comp[0].status, OpStatus::Pending);
    }

    #[test]
    fn a_failed_sagas_untouched_compensations_of_called_actions_read_as_successes() {
        let untouched = |id: &str, op| {
            let mut r = row(id, op, OpStatus::Pending);
            r.attempts = 0;
            r
        };
        // 01 succeeded and 02 refused (both called, both compensated); 03 never ran.
        let mut refused = row("02", Op::Action, OpStatus::Failed);
        refused.last_error = Some("409".into());
        let stored = vec![
            row("01", Op::Action, OpStatus::Succeeded),
            untouched("01", Op::Compensate),
            refused,
            untouched("02", Op::Compensate),
            untouched("03", Op::Action),
            untouched("03", Op::Compensate),
        ];
        let mut ops = stored.clone();
        imply_first_call_successes(&global(TransType::Saga, GlobalStatus::Failed), &mut ops);
        let seen: Vec<(&str, Op, OpStatus, i64)> = ops
            .iter()
            .map(|o| (o.branch_id.as_str(), o.op, o.status, o.attempts))
            .collect();
        assert_eq!(
            seen,
            [
                ("01", Op::Action, OpStatus::Succeeded, 1),
                ("01", Op::Compensate, OpStatus::Succeeded, 1),
                ("02", Op::Action, OpStatus::Failed, 1),
                ("02", Op::Compensate, OpStatus::Succeeded, 1),
                ("03", Op::Action, OpStatus::Pending, 0),
                ("03", Op::Compensate, OpStatus::Pending, 0),
            ]
        );
        // While it is still aborting, nothing is implied.
        let mut ops = stored.clone();
        imply_first_call_successes(&global(TransType::Saga, GlobalStatus::Aborting), &mut ops);
        assert_eq!(ops, stored);
    }

    #[test]
    fn a_compensation_with_a_row_of_its_own_is_not_listed_twice() {
        let mut stored = row("01", Op::Compensate, OpStatus::Failed);
        stored.attempts = 4;
        let ops = with_deferred_compensations(vec![
            (
                row("01", Op::Action, OpStatus::Succeeded),
                Some("http://p/01/undo".into()),
            ),
            (stored.clone(), None),
        ]);
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[1], stored);
    }
}
