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
