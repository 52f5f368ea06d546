//! MySQL 8 / MariaDB 10.6+: `?` placeholders, `INSERT IGNORE`, no `UPDATE … RETURNING`;
//! due work is claimed with `SELECT … FOR UPDATE SKIP LOCKED` then an update, in one
//! transaction. Writes are fenced by version and lease owner like everywhere else.

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{MySql, QueryBuilder};

use super::{
    Added, AttemptRecord, Context, GlobalRow, Inserted, Lease, NewOp, NewTransaction, OpRow,
    Progress, SaveRequest, Saved, StoreError,
};
use dtx::GlobalStatus;

/// The database clock in SQL: ms since the Unix epoch.
macro_rules! now {
    () => {
        "CAST(FLOOR(UNIX_TIMESTAMP(CURRENT_TIMESTAMP(3)) * 1000) AS SIGNED)"
    };
}

super::sql::row_decoders!(sqlx::MySql);

/// A store in a MySQL or MariaDB database.
#[derive(Debug, Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
}

impl MySqlStore {
    /// Connects to the database at `url` with up to `max_connections` connections.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = MySqlConnectOptions::from_str(url).ctx("parse the MySQL URL")?;
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections.max(2))
            .connect_with(options)
            .await
            .ctx("connect to MySQL")?;
        Ok(Self { pool })
    }
}

async fn insert_ops(
    conn: &mut MySqlConnection,
    gid: &str,
    ops: &[NewOp],
) -> Result<(), StoreError> {
    for chunk in ops.chunks(500) {
        let mut qb = QueryBuilder::<MySql>::new(
            "INSERT IGNORE INTO dtx_branch (gid, branch_id, op, seq, target, payload, status, retry_limit, request_timeout_ms, compensate, created_at, updated_at) ",
        );
        qb.push_values(chunk, |mut b, op| {
            b.push_bind(gid.to_owned())
                .push_bind(op.branch_id.clone())
                .push_bind(op.op.as_str())
                .push_bind(op.seq)
                .push_bind(op.target.clone())
                .push_bind(op.payload.clone())
                .push_bind(dtx::OpStatus::Pending.as_str())
                .push_bind(op.retry_limit)
                .push_bind(op.request_timeout_ms)
                .push_bind(op.compensate.clone())
                .push(now!())
                .push(now!());
        });
        qb.build()
            .execute(&mut *conn)
            .await
            .ctx("insert branch ops")?;
    }
    Ok(())
}

async fn insert_in(
    conn: &mut MySqlConnection,
    tx: &NewTransaction,
) -> Result<Inserted, StoreError> {
    let created = sqlx::query(concat!(
        "INSERT IGNORE INTO dtx_global (gid, trans_type, status, options, created_at, updated_at, timeout_at, next_attempt_at, lease_owner, lease_until, version) ",
        "VALUES (?, ?, ?, ?, ", now!(), ", ", now!(), ", ", now!(), " + ?, ", now!(), " + ?, ?, ", now!(), " + ?, 1)"
    ))
    .bind(&tx.gid)
    .bind(tx.trans_type.as_str())
    .bind(tx.status.as_str())
    .bind(&tx.options)
    .bind(tx.timeout_ms)
    .bind(tx.first_look_ms)
    .bind(tx.lease.as_ref().map(|l| l.owner.as_str()))
    .bind(tx.lease.as_ref().map(|l| l.ms))
    .execute(&mut *conn)
    .await
    .ctx("insert transaction")?
    .rows_affected();
    if created == 0 {
        let row = sqlx::query("SELECT * FROM dtx_global WHERE gid = ?")
            .bind(&tx.gid)
            .fetch_one(&mut *conn)
            .await
            .ctx("read existing transaction")?;
        return Ok(Inserted::Exists(Box::new(global_from_row(&row)?)));
    }
    insert_ops(conn, &tx.gid, &tx.ops).await?;
    Ok(Inserted::Created { version: 1 })
}

async fn save_in(
    conn: &mut MySqlConnection,
    gid: &str,
    owner: &str,
    version: i64,
    p: &Progress,
) -> Result<Saved, StoreError> {
    let updated = sqlx::query(concat!(
        "UPDATE dtx_global SET status = ?, needs_attention = ?, rollback_reason = COALESCE(rollback_reason, ?), ",
        "next_attempt_at = ?, attempts = attempts + ?, version = version + 1, updated_at = ", now!(), ", ",
        "finished_at = CASE WHEN ? THEN ", now!(), " ELSE finished_at END, ",
        "lease_owner = ?, lease_until = ", now!(), " + ? ",
        "WHERE gid = ? AND version = ? AND lease_owner = ?"
    ))
    .bind(p.status.as_str())
    .bind(p.needs_attention.as_deref())
    .bind(p.rollback_reason.as_deref())
    .bind(p.next_attempt_at)
    .bind(p.calls)
    .bind(p.status.is_final())
    .bind(p.lease_ms.map(|_| owner))
    .bind(p.lease_ms)
    .bind(gid)
    .bind(version)
    .bind(owner)
    .execute(&mut *conn)
    .await
    .ctx("save progress")?
    .rows_affected();
    if updated == 0 {
        return Ok(Saved::Conflict);
    }
    for op in &p.ops {
        // A compensation first written gets its row, from its action's, with its
        // new state; any other op (or a compensation with a row already) is updated.
        let mut written = 0;
        if op.op == dtx::Op::Compensate {
            written = sqlx::query(concat!(
                "INSERT INTO dtx_branch (gid, branch_id, op, seq, target, payload, status, attempts, next_at, last_error, retry_limit, request_timeout_ms, created_at, updated_at) ",
                "SELECT a.gid, a.branch_id, 'compensate', a.seq, a.compensate, a.payload, ?, ?, ?, ?, a.retry_limit, a.request_timeout_ms, a.created_at, ", now!(),
                " FROM dtx_branch a LEFT JOIN dtx_branch c ON c.gid = a.gid AND c.branch_id = a.branch_id AND c.op = 'compensate' ",
                "WHERE a.gid = ? AND a.branch_id = ? AND a.op = 'action' AND a.compensate IS NOT NULL AND c.gid IS NULL"
            ))
            .bind(op.status.as_str())
            .bind(op.attempts)
            .bind(op.next_at)
            .bind(op.last_error.as_deref())
            .bind(gid)
            .bind(&op.branch_id)
            .execute(&mut *conn)
            .await
            .ctx("write deferred compensation")?
            .rows_affected();
        }
        if written == 0 {
            sqlx::query(concat!(
                "UPDATE dtx_branch SET status = ?, attempts = ?, next_at = ?, last_error = ?, updated_at = ", now!(),
                " WHERE gid = ? AND branch_id = ? AND op = ?"
            ))
            .bind(op.status.as_str())
            .bind(op.attempts)
            .bind(op.next_at)
            .bind(op.last_error.as_deref())
            .bind(gid)
            .bind(&op.branch_id)
            .bind(op.op.as_str())
            .execute(&mut *conn)
            .await
            .ctx("save branch op")?;
        }
    }
    record_attempts(conn, gid, owner, &p.attempts).await?;
    Ok(Saved::Ok(version + 1))
}

async fn record_attempts(
    conn: &mut MySqlConnection,
    gid: &str,
    owner: &str,
    attempts: &[AttemptRecord],
) -> Result<(), StoreError> {
    if attempts.is_empty() {
        return Ok(());
    }
    let mut qb = QueryBuilder::<MySql>::new(
        "INSERT INTO dtx_attempt (gid, branch_id, op, started_at, duration_ms, outcome, error, owner) ",
    );
    qb.push_values(attempts, |mut b, a| {
        b.push_bind(gid.to_owned())
            .push_bind(a.branch_id.clone())
            .push_bind(a.op.as_str())
            .push_bind(a.started_at)
            .push_bind(a.duration_ms)
            .push_bind(a.outcome)
            .push_bind(a.error.clone())
            .push_bind(owner.to_owned());
    });
    qb.build()
        .execute(&mut *conn)
        .await
        .ctx("record attempts")?;
    Ok(())
}

#[async_trait::async_trait]
impl super::Store for MySqlStore {
    fn backend(&self) -> &'static str {
        "mysql"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate::Migrator::with_migrations(super::sql::migrations(&[
            (
                1,
                "coordinator",
                include_str!("../../../migrations/mysql/0001_coordinator.sql"),
            ),
            (
                2,
                "audit",
                include_str!("../../../migrations/mysql/0002_audit.sql"),
            ),
            (
                4,
                "deferred compensation",
                include_str!("../../../migrations/mysql/0004_deferred_compensation.sql"),
            ),
        ]));
        migrator.dangerous_set_table_name("dtx_schema_migrations");
        migrator.run(&self.pool).await?;
        Ok(())
    }

    async fn now(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar(concat!("SELECT ", now!()))
            .fetch_one(&self.pool)
            .await
            .ctx("read the clock")
    }

    async fn insert(&self, tx: &NewTransaction) -> Result<Inserted, StoreError> {
        let mut db = self.pool.begin().await.ctx("begin insert")?;
        let inserted = insert_in(&mut db, tx).await?;
        db.commit().await.ctx("commit insert")?;
        Ok(inserted)
    }

    async fn load(&self, gid: &str) -> Result<Option<(GlobalRow, Vec<OpRow>)>, StoreError> {
        let Some(row) = sqlx::query("SELECT * FROM dtx_global WHERE gid = ?")
            .bind(gid)
            .fetch_optional(&self.pool)
            .await
            .ctx("load transaction")?
        else {
            return Ok(None);
        };
        let global = global_from_row(&row)?;
        let rows =
            sqlx::query("SELECT * FROM dtx_branch WHERE gid = ? ORDER BY seq, branch_id, op")
                .bind(gid)
                .fetch_all(&self.pool)
                .await
                .ctx("load branch ops")?;
        let mut ops = ops_from_rows(gid, &rows)?;
        super::imply_first_call_successes(&global, &mut ops);
        Ok(Some((global, ops)))
    }

    async fn add_ops(&self, gid: &str, ops: &[NewOp]) -> Result<Added, StoreError> {
        let mut db = self.pool.begin().await.ctx("begin register branch")?;
        let touched = sqlx::query(concat!(
            "UPDATE dtx_global SET version = version + 1, updated_at = ",
            now!(),
            " WHERE gid = ? AND status = 'prepared'"
        ))
        .bind(gid)
        .execute(&mut *db)
        .await
        .ctx("lock prepared transaction")?
        .rows_affected();
        if touched == 0 {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM dtx_global WHERE gid = ?")
                    .bind(gid)
                    .fetch_optional(&mut *db)
                    .await
                    .ctx("read status")?;
            return Ok(match status {
                None => Added::NotFound,
                Some(s) => Added::NotPrepared(super::parse(gid, &s)?),
            });
        }
        let before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dtx_branch WHERE gid = ?")
            .bind(gid)
            .fetch_one(&mut *db)
            .await
            .ctx("count branch ops")?;
        // Registration order, assigned under the row lock taken above: TCC cancels run in
        // reverse of it.
        let next: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(MAX(seq) + 1, 0) AS SIGNED) FROM dtx_branch WHERE gid = ?",
        )
        .bind(gid)
        .fetch_one(&mut *db)
        .await
        .ctx("next branch seq")?;
        let ops: Vec<NewOp> = ops
            .iter()
            .cloned()
            .map(|o| NewOp { seq: next, ..o })
            .collect();
        insert_ops(&mut db, gid, &ops).await?;
        let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dtx_branch WHERE gid = ?")
            .bind(gid)
            .fetch_one(&mut *db)
            .await
            .ctx("count branch ops")?;
        db.commit().await.ctx("commit register branch")?;
        Ok(Added::Added((after - before).max(0) as u64))
    }

    async fn transition(
        &self,
        gid: &str,
        from: GlobalStatus,
        to: GlobalStatus,
        lease: &Lease,
        rollback_reason: Option<&str>,
    ) -> Result<Option<i64>, StoreError> {
        let mut db = self.pool.begin().await.ctx("begin transition")?;
        let moved = sqlx::query(concat!(
            "UPDATE dtx_global SET status = ?, version = version + 1, updated_at = ",
            now!(),
            ", next_attempt_at = ",
            now!(),
            ", lease_owner = ?, lease_until = ",
            now!(),
            " + ?, rollback_reason = COALESCE(rollback_reason, ?) WHERE gid = ? AND status = ?"
        ))
        .bind(to.as_str())
        .bind(&lease.owner)
        .bind(lease.ms)
        .bind(rollback_reason)
        .bind(gid)
        .bind(from.as_str())
        .execute(&mut *db)
        .await
        .ctx("move transaction")?
        .rows_affected();
        if moved == 0 {
            return Ok(None);
        }
        let version: i64 = sqlx::query_scalar("SELECT version FROM dtx_global WHERE gid = ?")
            .bind(gid)
            .fetch_one(&mut *db)
            .await
            .ctx("read version")?;
        db.commit().await.ctx("commit transition")?;
        Ok(Some(version))
    }

    async fn save(
        &self,
        gid: &str,
        owner: &str,
        version: i64,
        progress: &Progress,
    ) -> Result<Saved, StoreError> {
        let mut db = self.pool.begin().await.ctx("begin save")?;
        let saved = save_in(&mut db, gid, owner, version, progress).await?;
        db.commit().await.ctx("commit save")?;
        Ok(saved)
    }

    async fn write_batch(
        &self,
        inserts: &[NewTransaction],
        saves: &[SaveRequest],
    ) -> Result<(Vec<Inserted>, Vec<Saved>), StoreError> {
        let mut db = self.pool.begin().await.ctx("begin batch")?;
        let mut ins = Vec::with_capacity(inserts.len());
        for tx in inserts {
            ins.push(insert_in(&mut db, tx).await?);
        }
        let mut sav = Vec::with_capacity(saves.len());
        for s in saves {
            sav.push(save_in(&mut db, &s.gid, &s.owner, s.version, &s.progress).await?);
        }
        db.commit().await.ctx("commit batch")?;
        Ok((ins, sav))
    }

    async fn claim_due(&self, lease: &Lease, limit: i64) -> Result<Vec<String>, StoreError> {
        let mut db = self.pool.begin().await.ctx("begin claim")?;
        // SKIP LOCKED hands concurrent claimers disjoint rows (MySQL 8, MariaDB 10.6+).
        let gids: Vec<String> = sqlx::query_scalar(concat!(
            "SELECT gid FROM dtx_global WHERE next_attempt_at <= ",
            now!(),
            " AND (lease_until IS NULL OR lease_until < ",
            now!(),
            ") ORDER BY next_attempt_at LIMIT ? FOR UPDATE SKIP LOCKED"
        ))
        .bind(limit)
        .fetch_all(&mut *db)
        .await
        .ctx("claim due transactions")?;
        if !gids.is_empty() {
            let mut qb = QueryBuilder::<MySql>::new("UPDATE dtx_global SET lease_owner = ");
            qb.push_bind(&lease.owner)
                .push(", lease_until = ")
                .push(now!())
                .push(" + ")
                .push_bind(lease.ms);
            qb.push(", version = version + 1 WHERE gid IN (");
            let mut sep = qb.separated(", ");
            for g in &gids {
                sep.push_bind(g);
            }
            qb.push(")");
            qb.build().execute(&mut *db).await.ctx("take leases")?;
        }
        db.commit().await.ctx("commit claim")?;
        Ok(gids)
    }

    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE dtx_global SET lease_owner = NULL, lease_until = NULL, version = version + 1 \
             WHERE lease_owner = ? AND status NOT IN ('succeeded', 'failed')",
        )
        .bind(owner)
        .execute(&self.pool)
        .await
        .ctx("release leases")?
        .rows_affected())
    }

    async fn operate(
        &self,
        gid: &str,
        action: &super::OperatorAction,
        actor: &str,
        reason: &str,
    ) -> Result<super::Operated, super::StoreError> {
        self.admin_operate(gid, action, actor, reason).await
    }
    async fn audit(&self, gid: &str) -> Result<Vec<super::AuditRow>, super::StoreError> {
        self.admin_audit(gid).await
    }
    async fn list(
        &self,
        f: &super::ListFilter,
    ) -> Result<Vec<super::GlobalRow>, super::StoreError> {
        self.admin_list(f).await
    }
    async fn attempts(&self, gid: &str) -> Result<Vec<super::AttemptRow>, super::StoreError> {
        self.admin_attempts(gid).await
    }
    async fn overview(&self, now: i64) -> Result<super::Overview, super::StoreError> {
        self.admin_overview(now).await
    }
    async fn gauges(&self) -> Result<super::Gauges, super::StoreError> {
        self.admin_gauges().await
    }
}

super::sql::admin_queries! {
    store: MySqlStore,
    db: MySql,
    write: pool,
    read: pool,
    now: now!(),
    begin: "BEGIN",
    lock: " FOR UPDATE",
    minute: "finished_at DIV 60000",
}
