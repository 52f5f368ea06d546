//! SQLite: the embedded default. One file, one coordinator process.
//!
//! SQLite allows one writer at a time, so writes go through a pool of a single connection
//! (transactions start with `BEGIN IMMEDIATE`, never upgrading a read lock) while reads use
//! their own pool. WAL mode with `synchronous = FULL`: a commit is on disk when it returns.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{Context, StoreError};

/// A store in an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH` or `sqlite::memory:`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .ctx("parse the SQLite URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false)
            // 1 MiB of page cache per connection (SQLite's default is 2 MiB): the hot rows
            // are recent and few, and five connections' caches were a fifth of the
            // coordinator's memory with 10,000 transactions in flight.
            .pragma("cache_size", "-1024");
        // A file does not go away like a server connection: checking the writer
        // connection before each use (a round trip to its worker thread, on every
        // group-commit batch) would buy nothing.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .ctx("open the SQLite database")?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(false))
            .await
            .ctx("open the SQLite database for reading")?;
        Ok(Self { write, read })
    }
}

super::sql::sql_store! {
    store: SqliteStore,
    db: sqlx::Sqlite,
    backend: "sqlite",
    now: "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    begin: "BEGIN IMMEDIATE",
    lock: "",
    claim: "UPDATE dtx_global SET lease_owner = $1, \
            lease_until = CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) + $2, version = version + 1 \
            WHERE gid IN (SELECT gid FROM dtx_global \
                WHERE next_attempt_at <= CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) \
                AND (lease_until IS NULL OR lease_until < CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)) \
                ORDER BY next_attempt_at LIMIT $3) \
            RETURNING gid",
    migrations: super::sql::migrations(&[
        (1, "coordinator", include_str!("../../../migrations/sqlite/0001_coordinator.sql")),
        (2, "audit", include_str!("../../../migrations/sqlite/0002_audit.sql")),
        (3, "dashboard", include_str!("../../../migrations/sqlite/0003_dashboard.sql")),
        (4, "deferred compensation", include_str!("../../../migrations/sqlite/0004_deferred_compensation.sql")),
    ]),
    admin: read,
}

// SQLite runs in-process: statements cost no round trip, so the portable statement-per-row
// writes are as good as it gets; the commit (an fsync) is the cost, which group commit
// (`write_batch`) shares between many transactions.
impl SqliteStore {
    async fn insert_tx(&self, tx: &super::NewTransaction) -> Result<super::Inserted, StoreError> {
        let mut db = self
            .write
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("begin insert")?;
        let inserted = insert_in(&mut db, tx).await?;
        db.commit().await.ctx("commit insert")?;
        Ok(inserted)
    }

    async fn save_progress(
        &self,
        gid: &str,
        owner: &str,
        version: i64,
        p: &super::Progress,
    ) -> Result<super::Saved, StoreError> {
        let mut db = self
            .write
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("begin save")?;
        let saved = save_in(&mut db, gid, owner, version, p).await?;
        db.commit().await.ctx("commit save")?;
        Ok(saved)
    }

    async fn write_batch_tx(
        &self,
        inserts: &[super::NewTransaction],
        saves: &[super::SaveRequest],
    ) -> Result<(Vec<super::Inserted>, Vec<super::Saved>), StoreError> {
        let mut db = self
            .write
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("begin batch")?;
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
}
