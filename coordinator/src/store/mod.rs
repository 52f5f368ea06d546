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
    /// Calls made in the round.
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

/// What an operator can do to a transaction (each is audited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorAction {
    /// Clear `needs_attention`, give every pending op a fresh retry budget, make failed
    /// phase-2 ops pending again, and have the transaction driven at once.
    RetryNow,
    /// Move a prepared transaction (or a submitted saga) to `aborting`: the coordinator
    /// then runs the compensations / cancels / rollbacks.
    ForceAbort,
}

impl OperatorAction {
    /// Its name in the audit log.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RetryNow => "retry_now",
            Self::ForceAbort => "force_abort",
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
    /// Reads a transaction and its ops (ordered by seq, branch, op).
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
        action: OperatorAction,
        actor: &str,
        reason: &str,
    ) -> Result<Operated, StoreError>;
    /// The audit log of a transaction, oldest first.
    async fn audit(&self, gid: &str) -> Result<Vec<AuditRow>, StoreError>;
    /// Lists transactions, newest first.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<GlobalRow>, StoreError>;
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
