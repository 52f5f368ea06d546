//! XA branches on the participant's own database: phase 1 runs the work in a local
//! transaction and prepares it (PostgreSQL `PREPARE TRANSACTION`, MySQL/MariaDB
//! `XA PREPARE`); phase 2 commits or rolls it back when the coordinator says so;
//! [`postgres::recover`] / [`mysql::recover`] resolve what a restart left prepared.
//!
//! The branch is registered with the coordinator *before* its local transaction is
//! prepared, so a timeout rollback always reaches it. A rollback that finds nothing
//! prepared writes the barrier row of the branch's action, so a prepare still on its way
//! is refused instead of left in doubt; "unknown xid" in phase 2 counts as done.

use crate::api::RegisterBranch;
use crate::client::{Client, ClientError};
use crate::context::BranchContext;
use crate::result::BranchError;

/// The transaction id of a branch in the participant's database: `dtx:{gid}:{branch_id}`.
/// Both parts are restricted to `[A-Za-z0-9._:-]`, so the id needs no quoting.
///
/// ```
/// assert_eq!(dtx::xa::xid("order-7", "01"), "dtx:order-7:01");
/// ```
pub fn xid(gid: &str, branch_id: &str) -> String {
    format!("dtx:{gid}:{branch_id}")
}

/// Splits an xid made by [`xid`] into gid and branch id.
pub fn parse_xid(xid: &str) -> Option<(&str, &str)> {
    let rest = xid.strip_prefix("dtx:")?;
    let (gid, branch) = rest.rsplit_once(':')?;
    Some((gid, branch))
}

/// Why phase 1 of an XA branch did not prepare.
#[derive(Debug, thiserror::Error)]
pub enum XaError<E> {
    /// The coordinator refused the registration (the transaction left `prepared`, e.g. it
    /// timed out) or could not be reached; nothing was done.
    #[error("branch registration failed: {0}")]
    Register(#[from] ClientError),
    /// The branch was rolled back before it could prepare; nothing was done.
    #[error("branch already rolled back")]
    RolledBack,
    /// The database failed; the local transaction was rolled back.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The work failed; the local transaction was rolled back.
    #[error("work failed: {0}")]
    Work(E),
}

impl<E: std::fmt::Display> From<XaError<E>> for BranchError {
    fn from(e: XaError<E>) -> Self {
        match e {
            XaError::Work(e) => BranchError::Failure(e.to_string()),
            XaError::RolledBack => BranchError::Failure("branch already rolled back".into()),
            other => BranchError::Transient(other.to_string()),
        }
    }
}

/// Why a recovery stopped.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The coordinator could not be asked.
    #[error(transparent)]
    Coordinator(#[from] ClientError),
}

/// What a recovery did with one prepared transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The global transaction committed: committed here too.
    Committed(String),
    /// It rolled back (or is unknown to the coordinator): rolled back here too.
    RolledBack(String),
    /// Still undecided: left prepared (the coordinator's phase 2 or timeout will decide).
    Undecided(String),
}

async fn register(
    client: &Client,
    ctx: &BranchContext,
    phase2_url: &str,
) -> Result<(), ClientError> {
    let branch = RegisterBranch {
        branch_id: ctx.branch_id.clone(),
        url: phase2_url.to_owned(),
        ..RegisterBranch::default()
    };
    client.register_branch(&ctx.gid, &branch).await.map(|_| ())
}

async fn decision(client: &Client, gid: &str) -> Result<Option<bool>, ClientError> {
    use crate::types::GlobalStatus::*;
    match client.query(gid).await {
        Ok(t) => Ok(match t.status {
            Submitted | Succeeded => Some(true),
            Aborting | Failed => Some(false),
            Prepared => None,
        }),
        Err(e) if e.status() == Some(404) => Ok(Some(false)),
        Err(e) => Err(e),
    }
}

/// The loop of both recoveries: asks the coordinator for the decision on each prepared
/// xid and carries it out with `settle(xid, commit)`.
#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn recover_each(
    prepared: Vec<String>,
    client: &Client,
    settle: impl AsyncFn(&str, bool) -> Result<(), sqlx::Error>,
) -> Result<Vec<Resolution>, RecoverError> {
    let mut done = Vec::new();
    for x in prepared {
        let Some((gid, _)) = parse_xid(&x) else {
            continue;
        };
        done.push(match decision(client, gid).await? {
            Some(true) => {
                settle(&x, true).await?;
                Resolution::Committed(x)
            }
            Some(false) => {
                settle(&x, false).await?;
                Resolution::RolledBack(x)
            }
            None => Resolution::Undecided(x),
        });
    }
    Ok(done)
}

#[cfg(feature = "postgres")]
pub mod postgres {
    //! XA branches on PostgreSQL (needs `max_prepared_transactions > 0`).

    use sqlx::{Connection, PgConnection, PgPool};

    use super::{RecoverError, Resolution, XaError, register, xid};
    use crate::barrier::{self, BarrierBackend};
    use crate::client::Client;
    use crate::context::BranchContext;
    use crate::result::{BranchError, BranchResult};
    use crate::types::Op;

    fn is_unknown_xid(e: &sqlx::Error) -> bool {
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "42704")
    }

    /// "prepared transaction ... is busy": another session is committing or rolling it back.
    fn is_busy(e: &sqlx::Error) -> bool {
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "55000")
    }

    /// Phase 1: registers the branch (phase 2 at `phase2_url`), runs `work` in a local
    /// transaction with the branch's barrier row, and prepares it. `ctx.op` is ignored.
    pub async fn prepare<T, E>(
        pool: &PgPool,
        client: &Client,
        ctx: &BranchContext,
        phase2_url: &str,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<T, XaError<E>> {
        register(client, ctx, phase2_url).await?;
        let action = BranchContext {
            op: Op::Action,
            ..ctx.clone()
        };
        let mut conn = pool.acquire().await?;
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
        let step = async {
            if <sqlx::Postgres as BarrierBackend>::insert(
                &mut conn,
                &action,
                Op::Action,
                barrier::FIRST_BARRIER_ID,
                "action",
            )
            .await?
                == 0
            {
                return Ok(Err(XaError::RolledBack));
            }
            match work(&mut conn).await {
                Ok(v) => Ok(Ok(v)),
                Err(e) => Ok(Err(XaError::Work(e))),
            }
        }
        .await;
        match step {
            Ok(Ok(v)) => {
                let sql = format!("PREPARE TRANSACTION '{}'", xid(&ctx.gid, &ctx.branch_id));
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *conn)
                    .await?;
                Ok(v)
            }
            Ok(Err(e)) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
                Err(e)
            }
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                Err(XaError::Db(e))
            }
        }
    }

    /// Phase 2, for the handler at the branch's phase-2 URL: `commit` or `rollback` the
    /// prepared transaction of `ctx`. Repeats and unknown xids answer SUCCESS.
    pub async fn phase2(pool: &PgPool, ctx: &BranchContext) -> BranchResult {
        let x = xid(&ctx.gid, &ctx.branch_id);
        match ctx.op {
            Op::Commit => {
                match sqlx::raw_sql(sqlx::AssertSqlSafe(format!("COMMIT PREPARED '{x}'")))
                    .execute(pool)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if is_unknown_xid(&e) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Op::Rollback => {
                for _ in 0..10 {
                    match sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ROLLBACK PREPARED '{x}'")))
                        .execute(pool)
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(e) if is_unknown_xid(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                    // Nothing prepared: block a prepare that may still be on its way by
                    // writing its barrier row first. If that prepare holds the row already,
                    // the insert waits; give up waiting and roll the prepared one back.
                    let mut conn = pool.acquire().await?;
                    let mut tx = conn.begin().await?;
                    sqlx::query("SET LOCAL lock_timeout = '2s'")
                        .execute(&mut *tx)
                        .await?;
                    let action = BranchContext {
                        op: Op::Action,
                        ..ctx.clone()
                    };
                    match <sqlx::Postgres as BarrierBackend>::insert(
                        &mut tx,
                        &action,
                        Op::Action,
                        barrier::FIRST_BARRIER_ID,
                        "rollback",
                    )
                    .await
                    {
                        Ok(_) => {
                            tx.commit().await?;
                            return Ok(());
                        }
                        Err(_) => {
                            let _ = tx.rollback().await;
                        }
                    }
                }
                Err(BranchError::transient(format!(
                    "{x}: could not settle the rollback"
                )))
            }
            other => Err(BranchError::failure(format!(
                "phase 2 of an XA branch is commit or rollback, not {other}"
            ))),
        }
    }

    /// Transactions of dtx still prepared in this database.
    pub async fn prepared(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE 'dtx:%' ORDER BY gid")
            .fetch_all(pool)
            .await
    }

    /// Resolves what a restart left prepared, asking the coordinator for each decision. A
    /// phase-2 call or another recovery that settles a transaction first (the same way: the
    /// coordinator decides once) is not an error: the resolution reports how it ended.
    pub async fn recover(pool: &PgPool, client: &Client) -> Result<Vec<Resolution>, RecoverError> {
        super::recover_each(prepared(pool).await?, client, async |x, commit| {
            let verb = if commit { "COMMIT" } else { "ROLLBACK" };
            let sql = format!("{verb} PREPARED '{x}'");
            let mut busy = 0;
            loop {
                match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str()))
                    .execute(pool)
                    .await
                {
                    // Another session is finishing it right now: wait for it to be gone.
                    Err(e) if is_busy(&e) && busy < 100 => busy += 1,
                    Err(e) if !is_unknown_xid(&e) => return Err(e),
                    _ => return Ok(()),
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

#[cfg(feature = "mysql")]
pub mod mysql {
    //! XA branches on MySQL 8 / MariaDB 10.6+ (`XA START / END / PREPARE / COMMIT /
    //! ROLLBACK`). A prepared XA transaction is detached from its connection (the
    //! connection is closed), so phase 2 can finish it from any connection, after a restart
    //! too.
    //!
    //! `XA RECOVER` lists the prepared transactions of the whole server, not of one
    //! database, so each xid carries the pool's database as its branch qualifier
    //! (`XA START 'dtx:{gid}:{branch}', X'<database>'`): [`prepared`] and [`recover`] touch
    //! only this database's, never another service's on the same server. Name the database
    //! in the pool's URL: without one the qualifier is empty, as in xids of older SDKs, and
    //! every such xid on the server counts as this pool's.

    use sqlx::{Connection, MySqlConnection, MySqlPool};

    use super::{RecoverError, Resolution, XaError, register, xid};
    use crate::barrier::{self, BarrierBackend};
    use crate::client::Client;
    use crate::context::BranchContext;
    use crate::result::{BranchError, BranchResult};
    use crate::types::Op;

    /// The xid of a branch as MySQL takes it: [`xid`] as the global part, the pool's
    /// database (hex, so any name is safe) as the branch qualifier.
    fn scoped(pool: &MySqlPool, x: &str) -> String {
        format!("'{x}', X'{}'", hex(&database(pool)))
    }

    fn database(pool: &MySqlPool) -> Vec<u8> {
        let options = pool.connect_options();
        options
            .get_database()
            .unwrap_or_default()
            .as_bytes()
            .to_vec()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Runs `XA {verb}` on a branch's prepared transaction. An xid prepared by an SDK
    /// without the qualifier is tried next. `Ok(false)`: neither is known.
    async fn finish(pool: &MySqlPool, verb: &str, x: &str) -> Result<bool, sqlx::Error> {
        for id in [scoped(pool, x), format!("'{x}'")] {
            match sqlx::raw_sql(sqlx::AssertSqlSafe(format!("XA {verb} {id}")))
                .execute(pool)
                .await
            {
                Ok(_) => return Ok(true),
                // MariaDB answers a rollback of a detached prepared transaction with
                // XA_RBROLLBACK ("branch was rolled back"): done, not failed.
                Err(e) if verb == "ROLLBACK" && is_rolled_back(&e) => return Ok(true),
                Err(e) if is_unknown_xid(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// XA_RBROLLBACK.
    fn is_rolled_back(e: &sqlx::Error) -> bool {
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "XA100" || c == "1402")
    }

    /// MySQL's "unknown XID" (XAER_NOTA).
    fn is_unknown_xid(e: &sqlx::Error) -> bool {
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "XAE04" || c == "1397")
            || e.to_string().contains("XAER_NOTA")
    }

    /// Phase 1, as [`super::postgres::prepare`].
    pub async fn prepare<T, E>(
        pool: &MySqlPool,
        client: &Client,
        ctx: &BranchContext,
        phase2_url: &str,
        work: impl AsyncFnOnce(&mut MySqlConnection) -> Result<T, E>,
    ) -> Result<T, XaError<E>> {
        register(client, ctx, phase2_url).await?;
        let x = xid(&ctx.gid, &ctx.branch_id);
        let action = BranchContext {
            op: Op::Action,
            ..ctx.clone()
        };
        // A connection of its own: it is closed after XA PREPARE, which detaches the
        // prepared transaction from it.
        let options = pool.connect_options();
        let mut conn = MySqlConnection::connect_with(&options).await?;
        let x = scoped(pool, &x);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("XA START {x}")))
            .execute(&mut conn)
            .await?;
        let step = async {
            if <sqlx::MySql as BarrierBackend>::insert(
                &mut conn,
                &action,
                Op::Action,
                barrier::FIRST_BARRIER_ID,
                "action",
            )
            .await?
                == 0
            {
                return Ok(Err(XaError::RolledBack));
            }
            match work(&mut conn).await {
                Ok(v) => Ok(Ok(v)),
                Err(e) => Ok(Err(XaError::Work(e))),
            }
        }
        .await;
        let end = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("XA END {x}")))
            .execute(&mut conn)
            .await;
        let result = match (step, end) {
            (Ok(Ok(v)), Ok(_)) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("XA PREPARE {x}")))
                    .execute(&mut conn)
                    .await?;
                Ok(v)
            }
            (Ok(Err(e)), _) => {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("XA ROLLBACK {x}")))
                    .execute(&mut conn)
                    .await;
                Err(e)
            }
            (Err(e), _) | (_, Err(e)) => {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("XA ROLLBACK {x}")))
                    .execute(&mut conn)
                    .await;
                Err(XaError::Db(e))
            }
        };
        let _ = conn.close().await;
        result
    }

    /// Phase 2, as [`super::postgres::phase2`].
    pub async fn phase2(pool: &MySqlPool, ctx: &BranchContext) -> BranchResult {
        let x = xid(&ctx.gid, &ctx.branch_id);
        match ctx.op {
            Op::Commit => {
                finish(pool, "COMMIT", &x).await?;
                Ok(())
            }
            Op::Rollback => {
                for _ in 0..10 {
                    if finish(pool, "ROLLBACK", &x).await? {
                        return Ok(());
                    }
                    let mut conn = pool.acquire().await?;
                    sqlx::raw_sql("SET SESSION innodb_lock_wait_timeout = 2")
                        .execute(&mut *conn)
                        .await?;
                    let mut tx = conn.begin().await?;
                    let action = BranchContext {
                        op: Op::Action,
                        ..ctx.clone()
                    };
                    let inserted = <sqlx::MySql as BarrierBackend>::insert(
                        &mut tx,
                        &action,
                        Op::Action,
                        barrier::FIRST_BARRIER_ID,
                        "rollback",
                    )
                    .await;
                    match inserted {
                        Ok(_) => {
                            tx.commit().await?;
                            return Ok(());
                        }
                        Err(_) => {
                            let _ = tx.rollback().await;
                        }
                    }
                }
                Err(BranchError::transient(format!(
                    "{x}: could not settle the rollback"
                )))
            }
            other => Err(BranchError::failure(format!(
                "phase 2 of an XA branch is commit or rollback, not {other}"
            ))),
        }
    }

    /// Transactions of dtx still prepared in this pool's database (`XA RECOVER`, keeping
    /// the xids whose branch qualifier is the database), as [`xid`]s.
    pub async fn prepared(pool: &MySqlPool) -> Result<Vec<String>, sqlx::Error> {
        use sqlx::Row;
        let ours = database(pool);
        let rows = sqlx::raw_sql("XA RECOVER").fetch_all(pool).await?;
        let mut out = Vec::new();
        for r in &rows {
            let data: Vec<u8> = match r.try_get("data") {
                Ok(d) => d,
                Err(_) => r.try_get::<String, _>("data")?.into_bytes(),
            };
            let (gtrid, bqual) = (int(r, "gtrid_length")?, int(r, "bqual_length")?);
            let Some(qualifier) = data.get(gtrid..gtrid + bqual) else {
                continue;
            };
            if qualifier == ours.as_slice() && data.starts_with(b"dtx:") {
                out.push(String::from_utf8_lossy(&data[..gtrid]).into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// A length column of `XA RECOVER` (BIGINT on MariaDB, maybe narrower elsewhere).
    fn int(row: &sqlx::mysql::MySqlRow, column: &str) -> Result<usize, sqlx::Error> {
        use sqlx::Row;
        let n = match row.try_get::<i64, _>(column) {
            Ok(n) => n,
            Err(_) => row.try_get::<i32, _>(column)?.into(),
        };
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Resolves what a restart left prepared in this pool's database, as
    /// [`super::postgres::recover`].
    pub async fn recover(
        pool: &MySqlPool,
        client: &Client,
    ) -> Result<Vec<Resolution>, RecoverError> {
        super::recover_each(prepared(pool).await?, client, async |x, commit| {
            let verb = if commit { "COMMIT" } else { "ROLLBACK" };
            finish(pool, verb, x).await.map(|_| ())
        })
        .await
    }
}
