//! What differs per database: the insert-ignore, the reason lookup, retention and DDL.

use futures_util::future::BoxFuture;

use crate::context::BranchContext;
use crate::types::Op;

mod sealed {
    pub trait Sealed {}
}

/// A database the barrier runs on: PostgreSQL, MySQL/MariaDB or SQLite (each behind its
/// cargo feature). Sealed: the SQL of each is written here.
pub trait BarrierBackend: sqlx::Database + sealed::Sealed {
    /// How a barrier transaction begins (`BEGIN IMMEDIATE` on SQLite, so that the write
    /// lock is taken at once rather than upgraded).
    const BEGIN: &'static str;
    /// The DDL of `migrations/barrier/<backend>/`.
    const DDL: &'static str;

    /// Inserts a barrier row unless it exists; returns the rows inserted (0 or 1).
    fn insert<'c>(
        conn: &'c mut Self::Connection,
        ctx: &'c BranchContext,
        op: Op,
        barrier_id: &'c str,
        reason: &'c str,
    ) -> BoxFuture<'c, Result<u64, sqlx::Error>>;

    /// The reason stored in a barrier row.
    fn reason<'c>(
        conn: &'c mut Self::Connection,
        gid: &'c str,
        branch_id: &'c str,
        op: &'c str,
        barrier_id: &'c str,
    ) -> BoxFuture<'c, Result<Option<String>, sqlx::Error>>;

    /// Runs one DDL statement.
    fn execute<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>>;

    /// Deletes rows older than `secs` seconds.
    fn delete_older_than(
        conn: &mut Self::Connection,
        secs: i64,
    ) -> BoxFuture<'_, Result<u64, sqlx::Error>>;
}

macro_rules! backend {
    ($feature:literal, $db:ty, begin: $begin:literal, ddl: $ddl:expr, insert: $insert:literal, reason: $reason:literal, delete: $delete:literal) => {
        #[cfg(feature = $feature)]
        impl sealed::Sealed for $db {}

        #[cfg(feature = $feature)]
        impl BarrierBackend for $db {
            const BEGIN: &'static str = $begin;
            const DDL: &'static str = $ddl;

            fn insert<'c>(
                conn: &'c mut Self::Connection,
                ctx: &'c BranchContext,
                op: Op,
                barrier_id: &'c str,
                reason: &'c str,
            ) -> BoxFuture<'c, Result<u64, sqlx::Error>> {
                Box::pin(async move {
                    Ok(sqlx::query($insert)
                        .bind(ctx.trans_type.as_str())
                        .bind(&ctx.gid)
                        .bind(&ctx.branch_id)
                        .bind(op.as_str())
                        .bind(barrier_id)
                        .bind(reason)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected())
                })
            }

            fn reason<'c>(
                conn: &'c mut Self::Connection,
                gid: &'c str,
                branch_id: &'c str,
                op: &'c str,
                barrier_id: &'c str,
            ) -> BoxFuture<'c, Result<Option<String>, sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query_scalar($reason)
                        .bind(gid)
                        .bind(branch_id)
                        .bind(op)
                        .bind(barrier_id)
                        .fetch_optional(&mut *conn)
                        .await
                })
            }

            fn execute<'c>(
                conn: &'c mut Self::Connection,
                sql: &'c str,
            ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            }

            fn delete_older_than(
                conn: &mut Self::Connection,
                secs: i64,
            ) -> BoxFuture<'_, Result<u64, sqlx::Error>> {
                Box::pin(async move {
                    Ok(sqlx::query($delete)
                        .bind(secs)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected())
                })
            }
        }
    };
}

backend!(
    "postgres",
    sqlx::Postgres,
    begin: "BEGIN",
    ddl: include_str!("../../../migrations/barrier/postgres/0001_barrier.sql"),
    insert: "INSERT INTO dtx_barrier (trans_type, gid, branch_id, op, barrier_id, reason) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    reason: "SELECT reason FROM dtx_barrier WHERE gid = $1 AND branch_id = $2 AND op = $3 AND barrier_id = $4",
    delete: "DELETE FROM dtx_barrier WHERE created_at < now() - $1::float8 * interval '1 second'"
);

backend!(
    "mysql",
    sqlx::MySql,
    begin: "BEGIN",
    ddl: include_str!("../../../migrations/barrier/mysql/0001_barrier.sql"),
    insert: "INSERT IGNORE INTO dtx_barrier (trans_type, gid, branch_id, op, barrier_id, reason) VALUES (?, ?, ?, ?, ?, ?)",
    reason: "SELECT reason FROM dtx_barrier WHERE gid = ? AND branch_id = ? AND op = ? AND barrier_id = ?",
    delete: "DELETE FROM dtx_barrier WHERE created_at < NOW(3) - INTERVAL ? SECOND"
);

backend!(
    "sqlite",
    sqlx::Sqlite,
    begin: "BEGIN IMMEDIATE",
    ddl: include_str!("../../../migrations/barrier/sqlite/0001_barrier.sql"),
    insert: "INSERT INTO dtx_barrier (trans_type, gid, branch_id, op, barrier_id, reason) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    reason: "SELECT reason FROM dtx_barrier WHERE gid = $1 AND branch_id = $2 AND op = $3 AND barrier_id = $4",
    delete: "DELETE FROM dtx_barrier WHERE created_at < strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || $1 || ' seconds')"
);
