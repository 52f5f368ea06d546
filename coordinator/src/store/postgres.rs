//! PostgreSQL: the production store. Several coordinator processes may share one database:
//! due work is claimed with `FOR UPDATE SKIP LOCKED`, so concurrent pollers take disjoint
//! rows, and every driver write is fenced by version and lease owner.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{Context, StoreError};

/// A store in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    write: PgPool,
    read: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` with up to `max_connections` connections.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).ctx("parse the PostgreSQL URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .connect_with(options)
            .await
            .ctx("connect to PostgreSQL")?;
        Ok(Self {
            write: pool.clone(),
            read: pool,
        })
    }
}

super::sql::sql_store! {
    store: PgStore,
    db: sqlx::Postgres,
    backend: "postgres",
    now: "CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)",
    begin: "BEGIN",
    claim: "UPDATE dtx_global SET lease_owner = $1, \
            lease_until = CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT) + $2, version = version + 1 \
            WHERE gid IN (SELECT gid FROM dtx_global \
                WHERE next_attempt_at <= CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT) \
                AND (lease_until IS NULL OR lease_until < CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)) \
                ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
            RETURNING gid",
    migrations: super::sql::migrations(&[(1, "coordinator", include_str!("../../../migrations/postgres/0001_coordinator.sql"))]),
}

/// The database clock in SQL, as in the macro above.
macro_rules! now {
    () => {
        "CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)"
    };
}

// Each write is one statement: a data-modifying CTE that updates or inserts the global row,
// its branch ops (from arrays) and the attempt history at once. One round trip and one
// commit per write, instead of one per row plus BEGIN and COMMIT.
impl PgStore {
    async fn insert_tx(&self, tx: &super::NewTransaction) -> Result<super::Inserted, StoreError> {
        let ops = &tx.ops;
        let created: i64 = sqlx::query_scalar(concat!(
            "WITH g AS (INSERT INTO dtx_global (gid, trans_type, status, options, created_at, updated_at, timeout_at, next_attempt_at, lease_owner, lease_until, version) ",
            "VALUES ($1, $2, $3, $4, ", now!(), ", ", now!(), ", ", now!(), " + $5, ", now!(), " + $6, $7, ", now!(), " + $8, 1) ",
            "ON CONFLICT (gid) DO NOTHING RETURNING gid), ",
            "b AS (INSERT INTO dtx_branch (gid, branch_id, op, seq, target, payload, status, retry_limit, request_timeout_ms, created_at, updated_at) ",
            "SELECT g.gid, u.branch_id, u.op, u.seq, u.target, u.payload, 'pending', u.retry_limit, u.request_timeout_ms, ", now!(), ", ", now!(),
            " FROM g, unnest($9::text[], $10::text[], $11::bigint[], $12::text[], $13::bytea[], $14::bigint[], $15::bigint[]) ",
            "AS u(branch_id, op, seq, target, payload, retry_limit, request_timeout_ms)) ",
            "SELECT count(*) FROM g"
        ))
        .bind(&tx.gid)
        .bind(tx.trans_type.as_str())
        .bind(tx.status.as_str())
        .bind(&tx.options)
        .bind(tx.timeout_ms)
        .bind(tx.first_look_ms)
        .bind(tx.lease.as_ref().map(|l| l.owner.as_str()))
        .bind(tx.lease.as_ref().map(|l| l.ms))
        .bind(ops.iter().map(|o| o.branch_id.as_str()).collect::<Vec<_>>())
        .bind(ops.iter().map(|o| o.op.as_str()).collect::<Vec<_>>())
        .bind(ops.iter().map(|o| o.seq).collect::<Vec<_>>())
        .bind(ops.iter().map(|o| o.target.as_str()).collect::<Vec<_>>())
        .bind(ops.iter().map(|o| o.payload.as_slice()).collect::<Vec<_>>())
        .bind(ops.iter().map(|o| o.retry_limit).collect::<Vec<_>>())
        .bind(ops.iter().map(|o| o.request_timeout_ms).collect::<Vec<_>>())
        .fetch_one(&self.write)
        .await
        .ctx("insert transaction")?;
        if created == 1 {
            return Ok(super::Inserted::Created { version: 1 });
        }
        let row = sqlx::query("SELECT * FROM dtx_global WHERE gid = $1")
            .bind(&tx.gid)
            .fetch_one(&self.read)
            .await
            .ctx("read existing transaction")?;
        Ok(super::Inserted::Exists(Box::new(global_from_row(&row)?)))
    }

    async fn save_progress(&self, gid: &str, owner: &str, version: i64, p: &super::Progress) -> Result<super::Saved, StoreError> {
        let updated: i64 = sqlx::query_scalar(concat!(
            "WITH g AS (UPDATE dtx_global SET status = $1, needs_attention = $2, rollback_reason = COALESCE(rollback_reason, $3), ",
            "next_attempt_at = $4, attempts = attempts + $5, version = version + 1, updated_at = ", now!(), ", ",
            "finished_at = CASE WHEN $6 THEN ", now!(), " ELSE finished_at END, ",
            "lease_owner = $7, lease_until = ", now!(), " + $8 ",
            "WHERE gid = $9 AND version = $10 AND lease_owner = $11 RETURNING gid), ",
            "b AS (UPDATE dtx_branch AS br SET status = u.status, attempts = u.attempts, next_at = u.next_at, last_error = u.last_error, updated_at = ", now!(),
            " FROM g, unnest($12::text[], $13::text[], $14::text[], $15::bigint[], $16::bigint[], $17::text[]) AS u(branch_id, op, status, attempts, next_at, last_error) ",
            "WHERE br.gid = g.gid AND br.branch_id = u.branch_id AND br.op = u.op), ",
            "a AS (INSERT INTO dtx_attempt (gid, branch_id, op, started_at, duration_ms, outcome, error, owner) ",
            "SELECT g.gid, u.branch_id, u.op, u.started_at, u.duration_ms, u.outcome, u.error, $11 ",
            "FROM g, unnest($18::text[], $19::text[], $20::bigint[], $21::bigint[], $22::text[], $23::text[]) AS u(branch_id, op, started_at, duration_ms, outcome, error)) ",
            "SELECT count(*) FROM g"
        ))
        .bind(p.status.as_str())
        .bind(p.needs_attention.as_deref())
        .bind(p.rollback_reason.as_deref())
        .bind(p.next_attempt_at)
        .bind(p.attempts.len() as i64)
        .bind(p.status.is_final())
        .bind(p.lease_ms.map(|_| owner))
        .bind(p.lease_ms)
        .bind(gid)
        .bind(version)
        .bind(owner)
        .bind(p.ops.iter().map(|o| o.branch_id.as_str()).collect::<Vec<_>>())
        .bind(p.ops.iter().map(|o| o.op.as_str()).collect::<Vec<_>>())
        .bind(p.ops.iter().map(|o| o.status.as_str()).collect::<Vec<_>>())
        .bind(p.ops.iter().map(|o| o.attempts).collect::<Vec<_>>())
        .bind(p.ops.iter().map(|o| o.next_at).collect::<Vec<_>>())
        .bind(p.ops.iter().map(|o| o.last_error.as_deref()).collect::<Vec<_>>())
        .bind(p.attempts.iter().map(|a| a.branch_id.as_str()).collect::<Vec<_>>())
        .bind(p.attempts.iter().map(|a| a.op.as_str()).collect::<Vec<_>>())
        .bind(p.attempts.iter().map(|a| a.started_at).collect::<Vec<_>>())
        .bind(p.attempts.iter().map(|a| a.duration_ms).collect::<Vec<_>>())
        .bind(p.attempts.iter().map(|a| a.outcome).collect::<Vec<_>>())
        .bind(p.attempts.iter().map(|a| a.error.as_deref()).collect::<Vec<_>>())
        .fetch_one(&self.write)
        .await
        .ctx("save progress")?;
        Ok(if updated == 1 { super::Saved::Ok(version + 1) } else { super::Saved::Conflict })
    }
}
