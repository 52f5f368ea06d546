//! The barrier (DESIGN §5): a dedupe table in the participant's own database that makes
//! branch ops idempotent, turns a compensation whose original op never ran into a no-op
//! ("null compensation"), and refuses an original op that arrives after its compensation
//! ("anti-hanging").
//!
//! [`call`] runs the business work inside one database transaction with two
//! conflict-ignoring inserts into `dtx_barrier`; the unique index on
//! `(gid, branch_id, op, barrier_id)` serialises a racing try and cancel. Create the table
//! with the DDL in `migrations/barrier/<backend>/` (or [`migrate`]).
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn demo(pool: sqlx::PgPool, ctx: dtx::BranchContext) -> Result<(), dtx::BranchError> {
//! use dtx::barrier::{self, Barrier};
//! let outcome = barrier::call(&pool, &ctx, async |tx: &mut sqlx::PgConnection| {
//!     sqlx::query("UPDATE account SET frozen = frozen + $1 WHERE id = $2")
//!         .bind(30_i64).bind("alice").execute(&mut *tx).await?;
//!     Ok::<_, dtx::BranchError>(())
//! }).await?;
//! assert!(matches!(outcome, Barrier::Ran(()) | Barrier::Skipped(_)));
//! # Ok(()) }
//! ```

mod backend;

use std::time::Duration;

pub use backend::BarrierBackend;

use crate::context::BranchContext;
use crate::result::BranchError;
use crate::types::Op;

/// Why [`call`] did not run the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The same op of the same branch ran (or was skipped) before: a duplicate delivery.
    Duplicate,
    /// A compensation whose original op never ran: nothing to undo.
    NullCompensation,
    /// An original op arriving after its compensation: refused so it cannot hang.
    AfterCompensation,
}

/// What [`call`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Barrier<T> {
    /// The work ran and committed.
    Ran(T),
    /// The work was skipped; the barrier rows committed. Answer SUCCESS.
    Skipped(Skip),
}

impl<T> Barrier<T> {
    /// Whether the work ran.
    pub fn ran(&self) -> bool {
        matches!(self, Self::Ran(_))
    }
}

/// What can go wrong in [`call`].
#[derive(Debug, thiserror::Error)]
pub enum BarrierError<E> {
    /// The database failed; nothing was committed.
    #[error("barrier database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The work returned an error; everything was rolled back.
    #[error("branch work failed: {0}")]
    Work(E),
}

impl From<BarrierError<BranchError>> for BranchError {
    fn from(e: BarrierError<BranchError>) -> Self {
        match e {
            BarrierError::Db(e) => BranchError::Transient(e.to_string()),
            BarrierError::Work(e) => e,
        }
    }
}

/// The barrier id of a branch handler's first (and usually only) guarded call.
pub const FIRST_BARRIER_ID: &str = "01";

/// Runs `work` exactly once per `(gid, branch_id, op)`, inside one database transaction
/// of `pool`, following DESIGN §5. `work` gets the transaction's connection; return an
/// error to roll everything back (the barrier rows too, so a retry runs it again).
pub async fn call<DB, T, E>(
    pool: &sqlx::Pool<DB>,
    ctx: &BranchContext,
    work: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, E>,
) -> Result<Barrier<T>, BarrierError<E>>
where
    DB: BarrierBackend,
{
    let mut tx = pool.begin_with(DB::BEGIN).await?;
    // 1. A compensating op first inserts the row of the op it undoes: if that insert
    //    succeeds, the original never ran (and now never will: its insert will conflict).
    let origin_inserted = match ctx.op.undoes() {
        Some(original) => {
            DB::insert(&mut *tx, ctx, original, FIRST_BARRIER_ID, ctx.op.as_str()).await? > 0
        }
        None => false,
    };
    // 2. The row of the op itself: a conflict means a duplicate, or an original op after
    //    its compensation.
    let current_inserted =
        DB::insert(&mut *tx, ctx, ctx.op, FIRST_BARRIER_ID, ctx.op.as_str()).await? > 0;
    let skip = if ctx.op.is_compensating() && origin_inserted {
        Some(Skip::NullCompensation)
    } else if !current_inserted {
        Some(
            if ctx.op.undoes().is_none() && op_was_compensated::<DB>(&mut *tx, ctx).await? {
                Skip::AfterCompensation
            } else {
                Skip::Duplicate
            },
        )
    } else {
        None
    };
    if let Some(skip) = skip {
        tx.commit().await?;
        return Ok(Barrier::Skipped(skip));
    }
    match work(&mut *tx).await {
        Ok(v) => {
            tx.commit().await?;
            Ok(Barrier::Ran(v))
        }
        Err(e) => {
            tx.rollback().await?;
            Err(BarrierError::Work(e))
        }
    }
}

/// Whether the row of this (original) op was written by its compensation.
async fn op_was_compensated<DB: BarrierBackend>(
    conn: &mut DB::Connection,
    ctx: &BranchContext,
) -> Result<bool, sqlx::Error> {
    let reason = DB::reason(
        conn,
        &ctx.gid,
        &ctx.branch_id,
        ctx.op.as_str(),
        FIRST_BARRIER_ID,
    )
    .await?;
    Ok(reason.is_some_and(|r| r.parse::<Op>().is_ok_and(Op::is_compensating)))
}

/// The answer to a half message's check-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// The initiator's local transaction committed: deliver (SUCCESS).
    Committed,
    /// It rolled back, or never ran and now never will: fail the message (FAILURE).
    RolledBack,
}

/// Answers the coordinator's check-back for half message `gid` (DESIGN §5): inserts
/// `(gid, "00", "msg", "01")` with reason `rollback` unless the initiator's local
/// transaction wrote it with reason `msg`, then reads the reason back. The insert waits
/// while that local transaction is still open, so "in flight" is never taken for "rolled
/// back".
pub async fn query_prepared<DB: BarrierBackend>(
    pool: &sqlx::Pool<DB>,
    gid: &str,
) -> Result<Prepared, sqlx::Error> {
    let ctx = BranchContext::new(gid, crate::types::TransType::Msg, "00", Op::Msg);
    let mut tx = pool.begin_with(DB::BEGIN).await?;
    DB::insert(&mut *tx, &ctx, Op::Msg, FIRST_BARRIER_ID, "rollback").await?;
    let reason = DB::reason(&mut *tx, gid, "00", Op::Msg.as_str(), FIRST_BARRIER_ID).await?;
    tx.commit().await?;
    Ok(if reason.as_deref() == Some("msg") {
        Prepared::Committed
    } else {
        Prepared::RolledBack
    })
}

/// Creates the barrier table if it does not exist (the DDL of `migrations/barrier/`).
pub async fn migrate<DB: BarrierBackend>(pool: &sqlx::Pool<DB>) -> Result<(), sqlx::Error> {
    run_ddl(pool, DB::DDL).await
}

/// Runs the statements of a DDL file (comments dropped, split on `;`).
pub(crate) async fn run_ddl<DB: BarrierBackend>(
    pool: &sqlx::Pool<DB>,
    ddl: &str,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let ddl: String = ddl
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    for statement in ddl.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        DB::execute(&mut conn, statement).await?;
    }
    Ok(())
}

/// Retention: deletes barrier rows older than `age`; returns how many. Run it from a
/// periodic job with an age well past the coordinator's longest retry budget (rows of a
/// transaction that may still be retried must stay).
pub async fn delete_older_than<DB: BarrierBackend>(
    pool: &sqlx::Pool<DB>,
    age: Duration,
) -> Result<u64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    DB::delete_older_than(&mut conn, age.as_secs() as i64).await
}
