//! Messaging on the service's own database: the consumer [`inbox`] that applies each
//! Kafka record once, and the transactional [`outbox`] whose relay publishes what a
//! business transaction wrote. Tables: `migrations/messaging/<backend>/` (create them with
//! [`migrate`]). Publishing and consuming need the `kafka` feature.

pub mod inbox;
pub mod outbox;

use futures_util::future::BoxFuture;

use crate::barrier::BarrierBackend;

/// An outbox row waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Position (publish order).
    pub id: i64,
    /// Unique message id (the consumer's dedupe key, header `dtx-gid`).
    pub msg_id: String,
    /// Topic.
    pub topic: String,
    /// Record key.
    pub key: String,
    /// Record value.
    pub payload: Vec<u8>,
}

/// A database the inbox and outbox run on (the barrier's backends).
pub trait MessagingBackend: BarrierBackend {
    /// The DDL of `migrations/messaging/<backend>/`.
    const MESSAGING_DDL: &'static str;
    /// Whether claims lock rows so that several relays can share the table
    /// (`FOR UPDATE SKIP LOCKED`); SQLite has one writer and runs a single relay.
    const SKIP_LOCKED: bool;

    /// Inserts an inbox row unless it exists; returns the rows inserted (0 or 1).
    fn inbox_insert<'c>(
        conn: &'c mut Self::Connection,
        consumer: &'c str,
        gid: &'c str,
        branch_id: &'c str,
    ) -> BoxFuture<'c, Result<u64, sqlx::Error>>;

    /// Writes an outbox row.
    fn outbox_insert<'c>(
        conn: &'c mut Self::Connection,
        msg_id: &'c str,
        topic: &'c str,
        key: &'c str,
        payload: &'c [u8],
    ) -> BoxFuture<'c, Result<(), sqlx::Error>>;

    /// The oldest unsent rows (locked, where the backend can).
    fn outbox_claim(
        conn: &mut Self::Connection,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<OutboxRow>, sqlx::Error>>;

    /// Marks a row sent.
    fn outbox_mark_sent(
        conn: &mut Self::Connection,
        id: i64,
    ) -> BoxFuture<'_, Result<(), sqlx::Error>>;

    /// Unsent rows, and the age in seconds of the oldest.
    fn outbox_lag(
        conn: &mut Self::Connection,
    ) -> BoxFuture<'_, Result<(i64, Option<f64>), sqlx::Error>>;
}

macro_rules! messaging {
    ($feature:literal, $db:ty, ddl: $ddl:expr, skip_locked: $skip:literal, inbox: $inbox:literal, insert: $insert:literal, claim: $claim:literal, mark: $mark:literal, lag: $lag:literal) => {
        #[cfg(feature = $feature)]
        impl MessagingBackend for $db {
            const MESSAGING_DDL: &'static str = $ddl;
            const SKIP_LOCKED: bool = $skip;

            fn inbox_insert<'c>(
                conn: &'c mut Self::Connection,
                consumer: &'c str,
                gid: &'c str,
                branch_id: &'c str,
            ) -> BoxFuture<'c, Result<u64, sqlx::Error>> {
                Box::pin(async move {
                    Ok(sqlx::query($inbox)
                        .bind(consumer)
                        .bind(gid)
                        .bind(branch_id)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected())
                })
            }

            fn outbox_insert<'c>(
                conn: &'c mut Self::Connection,
                msg_id: &'c str,
                topic: &'c str,
                key: &'c str,
                payload: &'c [u8],
            ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query($insert)
                        .bind(msg_id)
                        .bind(topic)
                        .bind(key)
                        .bind(payload)
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            }

            fn outbox_claim(
                conn: &mut Self::Connection,
                limit: i64,
            ) -> BoxFuture<'_, Result<Vec<OutboxRow>, sqlx::Error>> {
                Box::pin(async move {
                    let rows: Vec<(i64, String, String, String, Vec<u8>)> = sqlx::query_as($claim)
                        .bind(limit)
                        .fetch_all(&mut *conn)
                        .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(id, msg_id, topic, key, payload)| OutboxRow {
                            id,
                            msg_id,
                            topic,
                            key,
                            payload,
                        })
                        .collect())
                })
            }

            fn outbox_mark_sent(
                conn: &mut Self::Connection,
                id: i64,
            ) -> BoxFuture<'_, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query($mark).bind(id).execute(&mut *conn).await?;
                    Ok(())
                })
            }

            fn outbox_lag(
                conn: &mut Self::Connection,
            ) -> BoxFuture<'_, Result<(i64, Option<f64>), sqlx::Error>> {
                Box::pin(async move { sqlx::query_as($lag).fetch_one(&mut *conn).await })
            }
        }
    };
}

messaging!(
    "postgres",
    sqlx::Postgres,
    ddl: include_str!("../../../migrations/messaging/postgres/0001_inbox_outbox.sql"),
    skip_locked: true,
    inbox: "INSERT INTO dtx_inbox (consumer, gid, branch_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    insert: "INSERT INTO dtx_outbox (msg_id, topic, msg_key, payload) VALUES ($1, $2, $3, $4)",
    claim: "SELECT id, msg_id, topic, msg_key, payload FROM dtx_outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    mark: "UPDATE dtx_outbox SET sent_at = now() WHERE id = $1",
    lag: "SELECT COUNT(*), CAST(EXTRACT(EPOCH FROM now() - MIN(created_at)) AS FLOAT8) FROM dtx_outbox WHERE sent_at IS NULL"
);

messaging!(
    "mysql",
    sqlx::MySql,
    ddl: include_str!("../../../migrations/messaging/mysql/0001_inbox_outbox.sql"),
    skip_locked: true,
    inbox: "INSERT IGNORE INTO dtx_inbox (consumer, gid, branch_id) VALUES (?, ?, ?)",
    insert: "INSERT INTO dtx_outbox (msg_id, topic, msg_key, payload) VALUES (?, ?, ?, ?)",
    claim: "SELECT id, msg_id, topic, msg_key, payload FROM dtx_outbox WHERE sent_at IS NULL ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
    mark: "UPDATE dtx_outbox SET sent_at = NOW(3) WHERE id = ?",
    lag: "SELECT COUNT(*), CAST(TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(3)) / 1000000.0 AS DOUBLE) FROM dtx_outbox WHERE sent_at IS NULL"
);

messaging!(
    "sqlite",
    sqlx::Sqlite,
    ddl: include_str!("../../../migrations/messaging/sqlite/0001_inbox_outbox.sql"),
    skip_locked: false,
    inbox: "INSERT INTO dtx_inbox (consumer, gid, branch_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    insert: "INSERT INTO dtx_outbox (msg_id, topic, msg_key, payload) VALUES ($1, $2, $3, $4)",
    claim: "SELECT id, msg_id, topic, msg_key, payload FROM dtx_outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1",
    mark: "UPDATE dtx_outbox SET sent_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = $1",
    lag: "SELECT COUNT(*), (julianday('now') - julianday(MIN(created_at))) * 86400.0 FROM dtx_outbox WHERE sent_at IS NULL"
);

/// Creates the inbox and outbox tables if they do not exist.
pub async fn migrate<DB: MessagingBackend>(pool: &sqlx::Pool<DB>) -> Result<(), sqlx::Error> {
    crate::barrier::run_ddl(pool, DB::MESSAGING_DDL).await
}
