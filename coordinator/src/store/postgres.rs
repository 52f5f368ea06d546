//! PostgreSQL: the production store. Several coordinator processes may share one database:
//! due work is claimed with `FOR UPDATE SKIP LOCKED`, so concurrent pollers take disjoint
//! rows, and every driver write is fenced by version and lease owner.

use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use super::{Context, StoreError};

/// A store in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    /// Connections of the write path: inserts, saves and group-commit batches.
    writes: Arc<WriteConnections>,
    /// The coordinator's other statements (branch registration, loads, claims).
    write: PgPool,
    /// The same pool: the shared SQL reads through `read`.
    read: PgPool,
    /// Dashboard and admin queries (listings, counts), planned as usual.
    admin: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` with up to `max_connections` connections.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let base = PgConnectOptions::from_str(url).ctx("parse the PostgreSQL URL")?;
        // The coordinator's statements are few, always the same shape, and all find their
        // rows through an index: plan them once per connection instead of at every
        // execution (the batch statements over arrays otherwise cost more to plan than to
        // run), and never as a sequential scan. A plan made while the tables are still
        // empty would otherwise scan them, and keep scanning them as they grow until the
        // statistics are refreshed (measured: a fresh database's throughput fell by half
        // within 30,000 transactions, the database busy reading dtx_global end to end).
        let hot = base.clone().options([
            ("plan_cache_mode", "force_generic_plan"),
            ("enable_seqscan", "off"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .connect_with(hot.clone())
            .await
            .ctx("connect to PostgreSQL")?;
        // Counting and listing for operators may well want a sequential scan.
        let admin = PgPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .connect_lazy_with(base);
        Ok(Self {
            writes: Arc::new(WriteConnections {
                options: hot,
                idle: Mutex::new(Vec::new()),
                slots: tokio::sync::Semaphore::new(max_connections.max(2) as usize),
            }),
            write: pool.clone(),
            read: pool,
            admin,
        })
    }
}

/// The connections of the write path, kept apart from the pool. sqlx's pool checks a
/// connection with a round trip to the server when it is taken and again when it is given
/// back: on the write path that made three round trips of every group-commit batch where
/// one does the work (measured at 1 client: coordinator CPU per transaction -20 to -30%).
/// Here a connection is checked only when it has been idle for a while, so that a server
/// restarted meanwhile shows up as a failed check rather than a failed write; after any
/// failed statement every kept connection is closed, and new ones are made (waiting, like
/// the pool, while the server refuses them).
struct WriteConnections {
    options: PgConnectOptions,
    /// Connections ready for the next write, with the time each was given back.
    idle: Mutex<Vec<(PgConnection, Instant)>>,
    /// Write connections that may be in use at once (`max_connections`; group commit
    /// uses one per writer).
    slots: tokio::sync::Semaphore,
}

impl WriteConnections {
    /// Idle this long, a connection is checked before it is used (a busy coordinator
    /// reuses its write connections within milliseconds and never pays for a check).
    const CHECK_AFTER: Duration = Duration::from_millis(250);
    /// Idle connections kept (one per group-commit writer is what the load needs).
    const KEEP: usize = 8;
    /// How long a write waits for a new connection (tried again while the server
    /// refuses them) before it fails.
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

    /// A connection for one write: the most recently used idle one, else a new one, once
    /// fewer than the configured number are in use.
    async fn take(&self) -> Result<WriteConnection<'_>, StoreError> {
        let slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| StoreError::Database {
                context: "take a write connection",
                source: sqlx::Error::PoolClosed,
            })?;
        let conn = self.open().await?;
        Ok(WriteConnection { conn, _slot: slot })
    }

    /// The most recently given back idle connection that is still alive, else a new one.
    async fn open(&self) -> Result<PgConnection, StoreError> {
        loop {
            let last = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some((mut conn, since)) = last else { break };
            if since.elapsed() < Self::CHECK_AFTER || conn.ping().await.is_ok() {
                return Ok(conn);
            }
        }
        // Like sqlx's pool: a server that refuses connections for now (restarting, failing
        // over, still starting up) is tried again with backoff until the deadline, so that
        // a short restart delays writes instead of failing them.
        let deadline = tokio::time::Instant::now() + Self::CONNECT_TIMEOUT;
        let mut backoff = Duration::from_millis(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let error =
                match tokio::time::timeout(left, PgConnection::connect_with(&self.options)).await {
                    Ok(Ok(conn)) => return Ok(conn),
                    Ok(Err(e)) => e,
                    Err(_) => sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {} s", Self::CONNECT_TIMEOUT.as_secs()),
                    )),
                };
            let transient = match &error {
                sqlx::Error::Io(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
                sqlx::Error::Database(e) => e.is_transient_in_connect_phase(),
                _ => false,
            };
            if !transient || tokio::time::Instant::now() + backoff >= deadline {
                return Err(error).ctx("connect to PostgreSQL");
            }
            tracing::debug!(%error, "PostgreSQL refused a write connection; trying again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Gives a connection back after a statement that ended with `result`.
    fn give<T>(&self, taken: WriteConnection<'_>, result: &Result<T, sqlx::Error>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if result.is_err() {
            // Its state is unknown (the server may be shutting down: "terminating
            // connection due to administrator command" is a database error too), and the
            // idle ones most likely share its fate: all are closed by the drop, and the
            // next write connects afresh, waiting for a restarting server.
            idle.clear();
            return;
        }
        if idle.len() < Self::KEEP {
            idle.push((taken.conn, Instant::now()));
        } else {
            drop(idle);
            tokio::spawn(taken.conn.close());
        }
    }
}

/// A write connection in use, holding one of the write path's slots.
struct WriteConnection<'a> {
    conn: PgConnection,
    _slot: tokio::sync::SemaphorePermit<'a>,
}

impl std::fmt::Debug for WriteConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.idle.lock().map(|i| i.len()).unwrap_or(0);
        f.debug_struct("WriteConnections")
            .field("idle", &idle)
            .finish()
    }
}

super::sql::sql_store! {
    store: PgStore,
    db: sqlx::Postgres,
    backend: "postgres",
    now: "CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)",
    begin: "BEGIN",
    lock: " FOR UPDATE",
    claim: "UPDATE dtx_global SET lease_owner = $1, \
            lease_until = CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT) + $2, version = version + 1 \
            WHERE gid IN (SELECT gid FROM dtx_global \
                WHERE next_attempt_at <= CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT) \
                AND (lease_until IS NULL OR lease_until < CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)) \
                ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
            RETURNING gid",
    migrations: super::sql::migrations(&[
        (1, "coordinator", include_str!("../../../migrations/postgres/0001_coordinator.sql")),
        (2, "audit", include_str!("../../../migrations/postgres/0002_audit.sql")),
        (3, "dashboard", include_str!("../../../migrations/postgres/0003_dashboard.sql")),
        (4, "deferred compensation", include_str!("../../../migrations/postgres/0004_deferred_compensation.sql")),
    ]),
    admin: admin,
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
        let insert = sqlx::query_scalar(concat!(
            "WITH g AS (INSERT INTO dtx_global (gid, trans_type, status, options, created_at, updated_at, timeout_at, next_attempt_at, lease_owner, lease_until, version) ",
            "VALUES ($1, $2, $3, $4, ", now!(), ", ", now!(), ", ", now!(), " + $5, ", now!(), " + $6, $7, ", now!(), " + $8, 1) ",
            "ON CONFLICT (gid) DO NOTHING RETURNING gid), ",
            "b AS (INSERT INTO dtx_branch (gid, branch_id, op, seq, target, payload, status, retry_limit, request_timeout_ms, compensate, created_at, updated_at) ",
            "SELECT g.gid, u.branch_id, u.op, u.seq, u.target, u.payload, 'pending', u.retry_limit, u.request_timeout_ms, u.compensate, ", now!(), ", ", now!(),
            " FROM g, unnest($9::text[], $10::text[], $11::bigint[], $12::text[], $13::bytea[], $14::bigint[], $15::bigint[], $16::text[]) ",
            "AS u(branch_id, op, seq, target, payload, retry_limit, request_timeout_ms, compensate)) ",
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
        .bind(ops.iter().map(|o| o.compensate.as_deref()).collect::<Vec<_>>());
        let mut w = self.writes.take().await?;
        let created = insert.fetch_one(&mut w.conn).await;
        self.writes.give(w, &created);
        let created: i64 = created.ctx("insert transaction")?;
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

    async fn save_progress(
        &self,
        gid: &str,
        owner: &str,
        version: i64,
        p: &super::Progress,
    ) -> Result<super::Saved, StoreError> {
        let sql = save_sql(
            !p.ops.is_empty(),
            p.ops.iter().any(|o| o.op == dtx::Op::Compensate),
            !p.attempts.is_empty(),
        );
        let save = sqlx::query_scalar(sql)
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
            .bind(
                p.ops
                    .iter()
                    .map(|o| o.branch_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(p.ops.iter().map(|o| o.op.as_str()).collect::<Vec<_>>())
            .bind(p.ops.iter().map(|o| o.status.as_str()).collect::<Vec<_>>())
            .bind(p.ops.iter().map(|o| o.attempts).collect::<Vec<_>>())
            .bind(p.ops.iter().map(|o| o.next_at).collect::<Vec<_>>())
            .bind(
                p.ops
                    .iter()
                    .map(|o| o.last_error.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                p.attempts
                    .iter()
                    .map(|a| a.branch_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(p.attempts.iter().map(|a| a.op.as_str()).collect::<Vec<_>>())
            .bind(p.attempts.iter().map(|a| a.started_at).collect::<Vec<_>>())
            .bind(p.attempts.iter().map(|a| a.duration_ms).collect::<Vec<_>>())
            .bind(p.attempts.iter().map(|a| a.outcome).collect::<Vec<_>>())
            .bind(
                p.attempts
                    .iter()
                    .map(|a| a.error.as_deref())
                    .collect::<Vec<_>>(),
            );
        let mut w = self.writes.take().await?;
        let updated = save.fetch_one(&mut w.conn).await;
        self.writes.give(w, &updated);
        let updated: i64 = updated.ctx("save progress")?;
        Ok(if updated == 1 {
            super::Saved::Ok(version + 1)
        } else {
            super::Saved::Conflict
        })
    }
}

// Group commit: many transactions' writes in one statement per kind and one commit.
impl PgStore {
    async fn write_batch_tx(
        &self,
        inserts: &[super::NewTransaction],
        saves: &[super::SaveRequest],
    ) -> Result<(Vec<super::Inserted>, Vec<super::Saved>), StoreError> {
        // Two inserts of one gid in one statement would both look created: write only the
        // first in the batch and the repeats afterwards, one by one (they find it there).
        // A lone write (the common case at low load) takes the one-row statements: the
        // batch statement with empty arrays costs the database ~35% more CPU per write
        // (measured at 1 client: 1.18-1.39 against 0.84-0.96 ms per W1 transaction).
        match (inserts, saves) {
            ([tx], []) => return Ok((vec![self.insert_tx(tx).await?], Vec::new())),
            ([], [s]) => {
                return Ok((
                    Vec::new(),
                    vec![
                        self.save_progress(&s.gid, &s.owner, s.version, &s.progress)
                            .await?,
                    ],
                ));
            }
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        let (firsts, repeats): (Vec<usize>, Vec<usize>) =
            (0..inserts.len()).partition(|&i| seen.insert(inserts[i].gid.as_str()));
        let (created, updated) = self.write_many(inserts, &firsts, saves).await?;
        let mut ins: Vec<Option<super::Inserted>> = vec![None; inserts.len()];
        for &i in &firsts {
            ins[i] = if created.contains(inserts[i].gid.as_str()) {
                Some(super::Inserted::Created { version: 1 })
            } else {
                // Rare: a repeated submit. Read what is there (after the batch's commit).
                let row = sqlx::query("SELECT * FROM dtx_global WHERE gid = $1")
                    .bind(&inserts[i].gid)
                    .fetch_one(&self.read)
                    .await
                    .ctx("read existing transaction")?;
                Some(super::Inserted::Exists(Box::new(global_from_row(&row)?)))
            };
        }
        for i in repeats {
            ins[i] = Some(self.insert_tx(&inserts[i]).await?);
        }
        let ins = ins
            .into_iter()
            .map(|i| i.ok_or_else(|| StoreError::Batch("insert without answer".into())))
            .collect::<Result<_, _>>()?;
        let sav = saves
            .iter()
            .map(|s| {
                if updated.contains(s.gid.as_str()) {
                    super::Saved::Ok(s.version + 1)
                } else {
                    super::Saved::Conflict
                }
            })
            .collect();
        Ok((ins, sav))
    }

    /// The inserts (those at `which`) and the saves of a batch in one statement, which
    /// commits by itself: one round trip, no BEGIN and COMMIT. Returns the gids created
    /// and the gids saved (a save missing from it lost its fence).
    async fn write_many(
        &self,
        inserts: &[super::NewTransaction],
        which: &[usize],
        saves: &[super::SaveRequest],
    ) -> Result<
        (
            std::collections::HashSet<String>,
            std::collections::HashSet<String>,
        ),
        StoreError,
    > {
        let txs: Vec<&super::NewTransaction> = which.iter().map(|&i| &inserts[i]).collect();
        let ops: Vec<(&str, &super::NewOp)> = txs
            .iter()
            .flat_map(|t| t.ops.iter().map(move |o| (t.gid.as_str(), o)))
            .collect();
        let updates: Vec<(&str, &super::OpUpdate)> = saves
            .iter()
            .flat_map(|s| s.progress.ops.iter().map(move |o| (s.gid.as_str(), o)))
            .collect();
        let attempts: Vec<(&super::SaveRequest, &super::AttemptRecord)> = saves
            .iter()
            .flat_map(|s| s.progress.attempts.iter().map(move |a| (s, a)))
            .collect();
        // The saves' gids were all inserted by earlier, committed statements: the two
        // halves touch different rows and need not see each other's changes.
        let sql = batch_sql(BatchParts {
            inserts: !txs.is_empty(),
            saves: !saves.is_empty(),
            op_updates: !updates.is_empty(),
            compensations: updates.iter().any(|(_, o)| o.op == dtx::Op::Compensate),
            attempts: !attempts.is_empty(),
        });
        let batch = sqlx::query_as(sql)
            .bind(txs.iter().map(|t| t.gid.as_str()).collect::<Vec<_>>())
            .bind(
                txs.iter()
                    .map(|t| t.trans_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(txs.iter().map(|t| t.status.as_str()).collect::<Vec<_>>())
            .bind(txs.iter().map(|t| t.options.as_str()).collect::<Vec<_>>())
            .bind(txs.iter().map(|t| t.timeout_ms).collect::<Vec<_>>())
            .bind(txs.iter().map(|t| t.first_look_ms).collect::<Vec<_>>())
            .bind(
                txs.iter()
                    .map(|t| t.lease.as_ref().map(|l| l.owner.as_str()))
                    .collect::<Vec<_>>(),
            )
            .bind(
                txs.iter()
                    .map(|t| t.lease.as_ref().map(|l| l.ms))
                    .collect::<Vec<_>>(),
            )
            .bind(ops.iter().map(|(g, _)| *g).collect::<Vec<_>>())
            .bind(
                ops.iter()
                    .map(|(_, o)| o.branch_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(ops.iter().map(|(_, o)| o.op.as_str()).collect::<Vec<_>>())
            .bind(ops.iter().map(|(_, o)| o.seq).collect::<Vec<_>>())
            .bind(
                ops.iter()
                    .map(|(_, o)| o.target.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                ops.iter()
                    .map(|(_, o)| o.payload.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(ops.iter().map(|(_, o)| o.retry_limit).collect::<Vec<_>>())
            .bind(
                ops.iter()
                    .map(|(_, o)| o.request_timeout_ms)
                    .collect::<Vec<_>>(),
            )
            .bind(saves.iter().map(|s| s.gid.as_str()).collect::<Vec<_>>())
            .bind(saves.iter().map(|s| s.version).collect::<Vec<_>>())
            .bind(saves.iter().map(|s| s.owner.as_str()).collect::<Vec<_>>())
            .bind(
                saves
                    .iter()
                    .map(|s| s.progress.status.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                saves
                    .iter()
                    .map(|s| s.progress.needs_attention.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                saves
                    .iter()
                    .map(|s| s.progress.rollback_reason.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                saves
                    .iter()
                    .map(|s| s.progress.next_attempt_at)
                    .collect::<Vec<_>>(),
            )
            .bind(saves.iter().map(|s| s.progress.calls).collect::<Vec<_>>())
            .bind(
                saves
                    .iter()
                    .map(|s| s.progress.status.is_final())
                    .collect::<Vec<_>>(),
            )
            .bind(
                saves
                    .iter()
                    .map(|s| s.progress.lease_ms)
                    .collect::<Vec<_>>(),
            )
            .bind(updates.iter().map(|(g, _)| *g).collect::<Vec<_>>())
            .bind(
                updates
                    .iter()
                    .map(|(_, o)| o.branch_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                updates
                    .iter()
                    .map(|(_, o)| o.op.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                updates
                    .iter()
                    .map(|(_, o)| o.status.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(updates.iter().map(|(_, o)| o.attempts).collect::<Vec<_>>())
            .bind(updates.iter().map(|(_, o)| o.next_at).collect::<Vec<_>>())
            .bind(
                updates
                    .iter()
                    .map(|(_, o)| o.last_error.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                attempts
                    .iter()
                    .map(|(s, _)| s.gid.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                attempts
                    .iter()
                    .map(|(_, a)| a.branch_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                attempts
                    .iter()
                    .map(|(_, a)| a.op.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                attempts
                    .iter()
                    .map(|(_, a)| a.started_at)
                    .collect::<Vec<_>>(),
            )
            .bind(
                attempts
                    .iter()
                    .map(|(_, a)| a.duration_ms)
                    .collect::<Vec<_>>(),
            )
            .bind(attempts.iter().map(|(_, a)| a.outcome).collect::<Vec<_>>())
            .bind(
                attempts
                    .iter()
                    .map(|(_, a)| a.error.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                attempts
                    .iter()
                    .map(|(s, _)| s.owner.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                ops.iter()
                    .map(|(_, o)| o.compensate.as_deref())
                    .collect::<Vec<_>>(),
            );
        let mut w = self.writes.take().await?;
        let rows = batch.fetch_all(&mut w.conn).await;
        self.writes.give(w, &rows);
        let rows: Vec<(bool, String)> = rows.ctx("write batch")?;
        let mut created = std::collections::HashSet::new();
        let mut updated = std::collections::HashSet::new();
        for (inserted, gid) in rows {
            if inserted {
                created.insert(gid);
            } else {
                updated.insert(gid);
            }
        }
        Ok((created, updated))
    }
}

/// One save's fenced update of its global row ($1-$11).
const SAVE_ROWS: &str = concat!(
    "g AS (UPDATE dtx_global SET status = $1, needs_attention = $2, rollback_reason = COALESCE(rollback_reason, $3), ",
    "next_attempt_at = $4, attempts = attempts + $5, version = version + 1, updated_at = ",
    now!(),
    ", ",
    "finished_at = CASE WHEN $6 THEN ",
    now!(),
    " ELSE finished_at END, ",
    "lease_owner = $7, lease_until = ",
    now!(),
    " + $8 ",
    "WHERE gid = $9 AND version = $10 AND lease_owner = $11 RETURNING gid)"
);

/// One save's op updates ($12-$17).
const SAVE_OPS: &str = concat!(
    "b AS (UPDATE dtx_branch AS br SET status = u.status, attempts = u.attempts, next_at = u.next_at, last_error = u.last_error, updated_at = ",
    now!(),
    " FROM g, unnest($12::text[], $13::text[], $14::text[], $15::bigint[], $16::bigint[], $17::text[]) AS u(branch_id, op, status, attempts, next_at, last_error) ",
    "WHERE br.gid = g.gid AND br.branch_id = u.branch_id AND br.op = u.op)"
);

/// A compensation first written gets its row from its action's (the update above found
/// none; one already there is left to it). A plain insert: the fence (joined through g)
/// admits one writer, and ON CONFLICT would cost a speculative insertion, measured at
/// 1.7x a plain one.
const SAVE_COMPENSATIONS: &str = concat!(
    "c AS (INSERT INTO dtx_branch (gid, branch_id, op, seq, target, payload, status, attempts, next_at, last_error, retry_limit, request_timeout_ms, created_at, updated_at) ",
    "SELECT a.gid, a.branch_id, u.op, a.seq, a.compensate, a.payload, u.status, u.attempts, u.next_at, u.last_error, a.retry_limit, a.request_timeout_ms, a.created_at, ",
    now!(),
    " FROM g, unnest($12::text[], $13::text[], $14::text[], $15::bigint[], $16::bigint[], $17::text[]) AS u(branch_id, op, status, attempts, next_at, last_error) ",
    "CROSS JOIN LATERAL (SELECT * FROM dtx_branch a WHERE a.gid = $9 AND a.branch_id = u.branch_id AND a.op = 'action' ",
    "AND a.compensate IS NOT NULL AND NOT EXISTS (SELECT 1 FROM dtx_branch c ",
    "WHERE c.gid = $9 AND c.branch_id = u.branch_id AND c.op = 'compensate') OFFSET 0) a ",
    "WHERE u.op = 'compensate')"
);

/// One save's call history ($18-$23).
const SAVE_ATTEMPTS: &str = concat!(
    "a AS (INSERT INTO dtx_attempt (gid, branch_id, op, started_at, duration_ms, outcome, error, owner) ",
    "SELECT g.gid, u.branch_id, u.op, u.started_at, u.duration_ms, u.outcome, u.error, $11 ",
    "FROM g, unnest($18::text[], $19::text[], $20::bigint[], $21::bigint[], $22::text[], $23::text[]) AS u(branch_id, op, started_at, duration_ms, outcome, error))"
);

/// The statement of one save, with the compensation and history parts only when it
/// has them (as for batches: see [`batch_sql`]). Returns 1 row counting the global rows
/// updated (0: the fence refused it).
fn save_sql(ops: bool, compensations: bool, attempts: bool) -> &'static str {
    static VARIANTS: [std::sync::OnceLock<String>; 8] = [const { std::sync::OnceLock::new() }; 8];
    let index = usize::from(ops) | usize::from(compensations) << 1 | usize::from(attempts) << 2;
    VARIANTS[index].get_or_init(|| {
        let mut ctes = vec![SAVE_ROWS];
        if ops {
            ctes.push(SAVE_OPS);
        }
        if compensations {
            ctes.push(SAVE_COMPENSATIONS);
        }
        if attempts {
            ctes.push(SAVE_ATTEMPTS);
        }
        format!("WITH {} SELECT count(*) FROM g", ctes.join(", "))
    })
}

/// What a batch holds, which decides the statement that writes it.
#[derive(Debug, Clone, Copy)]
struct BatchParts {
    /// New transactions (global rows and their branch ops).
    inserts: bool,
    /// Saves of transactions already there (their global rows).
    saves: bool,
    /// Op updates (a succeeded saga's final save often has none: see
    /// [`super::implied_by_outcome`]).
    op_updates: bool,
    /// Among the op updates, a compensation (which may need its row made).
    compensations: bool,
    /// Call history to append.
    attempts: bool,
}

/// New global rows, and their branch ops (parameters $1-$16, $42).
const BATCH_INSERTS: &str = concat!(
    "g AS (INSERT INTO dtx_global (gid, trans_type, status, options, created_at, updated_at, timeout_at, next_attempt_at, lease_owner, lease_until, version) ",
    "SELECT t.gid, t.trans_type, t.status, t.options, ",
    now!(),
    ", ",
    now!(),
    ", ",
    now!(),
    " + t.timeout_ms, ",
    now!(),
    " + t.first_look_ms, t.lease_owner, ",
    now!(),
    " + t.lease_ms, 1 ",
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::bigint[]) ",
    "AS t(gid, trans_type, status, options, timeout_ms, first_look_ms, lease_owner, lease_ms) ",
    "ON CONFLICT (gid) DO NOTHING RETURNING gid), ",
    "b AS (INSERT INTO dtx_branch (gid, branch_id, op, seq, target, payload, status, retry_limit, request_timeout_ms, compensate, created_at, updated_at) ",
    "SELECT u.gid, u.branch_id, u.op, u.seq, u.target, u.payload, 'pending', u.retry_limit, u.request_timeout_ms, u.compensate, ",
    now!(),
    ", ",
    now!(),
    " FROM unnest($9::text[], $10::text[], $11::text[], $12::bigint[], $13::text[], $14::bytea[], $15::bigint[], $16::bigint[], $42::text[]) ",
    "AS u(gid, branch_id, op, seq, target, payload, retry_limit, request_timeout_ms, compensate) JOIN g ON g.gid = u.gid)"
);

/// Fenced updates of global rows ($17-$26).
const BATCH_SAVES: &str = concat!(
    "i AS (SELECT * FROM unnest($17::text[], $18::bigint[], $19::text[], $20::text[], $21::text[], $22::text[], $23::bigint[], $24::bigint[], $25::bool[], $26::bigint[]) ",
    "AS t(gid, version, owner, status, needs_attention, rollback_reason, next_attempt_at, calls, final, lease_ms)), ",
    "s AS (UPDATE dtx_global d SET status = i.status, needs_attention = i.needs_attention, ",
    "rollback_reason = COALESCE(d.rollback_reason, i.rollback_reason), next_attempt_at = i.next_attempt_at, ",
    "attempts = d.attempts + i.calls, version = d.version + 1, updated_at = ",
    now!(),
    ", ",
    "finished_at = CASE WHEN i.final THEN ",
    now!(),
    " ELSE d.finished_at END, ",
    "lease_owner = CASE WHEN i.lease_ms IS NULL THEN NULL ELSE i.owner END, lease_until = ",
    now!(),
    " + i.lease_ms ",
    // `= ANY(...)` lets the planner find the rows through the primary key instead of
    // joining the whole table with the unnested input.
    "FROM i WHERE d.gid = ANY($17::text[]) AND d.gid = i.gid AND d.version = i.version AND d.lease_owner = i.owner RETURNING d.gid)"
);

/// The saves' op updates ($27-$33), for the ops that have rows (see BATCH_COMPENSATIONS).
const BATCH_OP_UPDATES: &str = concat!(
    "sb AS (UPDATE dtx_branch br SET status = u.status, attempts = u.attempts, next_at = u.next_at, last_error = u.last_error, updated_at = ",
    now!(),
    " FROM unnest($27::text[], $28::text[], $29::text[], $30::text[], $31::bigint[], $32::bigint[], $33::text[]) ",
    "AS u(gid, branch_id, op, status, attempts, next_at, last_error) JOIN s ON s.gid = u.gid ",
    "WHERE br.gid = ANY($27::text[]) AND br.gid = u.gid AND br.branch_id = u.branch_id AND br.op = u.op)"
);

/// A compensation first written gets its row from its action's (see save_progress).
const BATCH_COMPENSATIONS: &str = concat!(
    "sc AS (INSERT INTO dtx_branch (gid, branch_id, op, seq, target, payload, status, attempts, next_at, last_error, retry_limit, request_timeout_ms, created_at, updated_at) ",
    "SELECT a.gid, a.branch_id, u.op, a.seq, a.compensate, a.payload, u.status, u.attempts, u.next_at, u.last_error, a.retry_limit, a.request_timeout_ms, a.created_at, ",
    now!(),
    " FROM unnest($27::text[], $28::text[], $29::text[], $30::text[], $31::bigint[], $32::bigint[], $33::text[]) ",
    "AS u(gid, branch_id, op, status, attempts, next_at, last_error) JOIN s ON s.gid = u.gid ",
    // A lateral subquery kept apart (OFFSET 0) looks both rows up by their whole
    // primary key; flattened, the generic plan walked every compensation's index
    // entry for each op (measured: W2's database CPU up 10x).
    "CROSS JOIN LATERAL (SELECT * FROM dtx_branch a WHERE a.gid = u.gid AND a.branch_id = u.branch_id AND a.op = 'action' ",
    "AND a.compensate IS NOT NULL AND NOT EXISTS (SELECT 1 FROM dtx_branch c ",
    "WHERE c.gid = u.gid AND c.branch_id = u.branch_id AND c.op = 'compensate') OFFSET 0) a ",
    "WHERE u.op = 'compensate')"
);

/// Call history of the saves ($34-$41).
const BATCH_ATTEMPTS: &str = concat!(
    "sa AS (INSERT INTO dtx_attempt (gid, branch_id, op, started_at, duration_ms, outcome, error, owner) ",
    "SELECT u.gid, u.branch_id, u.op, u.started_at, u.duration_ms, u.outcome, u.error, u.owner ",
    "FROM unnest($34::text[], $35::text[], $36::text[], $37::bigint[], $38::bigint[], $39::text[], $40::text[], $41::text[]) ",
    "AS u(gid, branch_id, op, started_at, duration_ms, outcome, error, owner) JOIN s ON s.gid = u.gid)"
);

/// The batch statement for what a batch holds: only the parts it needs. Every part the
/// database prepares costs it at each execution (plan start-up, a lock on each table
/// and index it names) even when its input is empty; most batches hold no compensation
/// and no call history. Every variant takes the same 42 parameters, so that one binding
/// serves them all. Returns `(inserted?, gid)` rows: the gids created and saved.
fn batch_sql(parts: BatchParts) -> &'static str {
    static VARIANTS: [std::sync::OnceLock<String>; 32] = [const { std::sync::OnceLock::new() }; 32];
    let index = usize::from(parts.inserts)
        | usize::from(parts.saves) << 1
        | usize::from(parts.op_updates) << 2
        | usize::from(parts.compensations) << 3
        | usize::from(parts.attempts) << 4;
    VARIANTS[index].get_or_init(|| {
        let mut ctes = Vec::new();
        if parts.inserts {
            ctes.push(BATCH_INSERTS);
        }
        if parts.saves {
            ctes.push(BATCH_SAVES);
            if parts.op_updates {
                ctes.push(BATCH_OP_UPDATES);
            }
            if parts.compensations {
                ctes.push(BATCH_COMPENSATIONS);
            }
            if parts.attempts {
                ctes.push(BATCH_ATTEMPTS);
            }
        }
        let select = match (parts.inserts, parts.saves) {
            (true, true) => "SELECT true, gid FROM g UNION ALL SELECT false, gid FROM s",
            (true, false) => "SELECT true, gid FROM g",
            _ => "SELECT false, gid FROM s",
        };
        format!("WITH {} {select}", ctes.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_statement_names_only_the_parts_it_needs() {
        let all = batch_sql(BatchParts {
            inserts: true,
            saves: true,
            op_updates: true,
            compensations: true,
            attempts: true,
        });
        for part in ["g AS", "b AS", "i AS", "s AS", "sb AS", "sc AS", "sa AS"] {
            assert!(all.contains(part), "{part} missing");
        }
        let saves = batch_sql(BatchParts {
            inserts: false,
            saves: true,
            op_updates: false,
            compensations: false,
            attempts: false,
        });
        assert!(saves.starts_with("WITH i AS"));
        assert!(!saves.contains("dtx_branch") && !saves.contains("dtx_attempt"));
        assert!(saves.ends_with("SELECT false, gid FROM s"));
        let inserts = batch_sql(BatchParts {
            inserts: true,
            saves: false,
            op_updates: true,
            compensations: true,
            attempts: true,
        });
        assert!(!inserts.contains("s AS") && !inserts.contains("dtx_attempt"));
        assert!(inserts.ends_with("SELECT true, gid FROM g"));
        let lone = save_sql(false, false, false);
        assert!(lone.starts_with("WITH g AS (UPDATE dtx_global"));
        assert!(!lone.contains("dtx_branch") && !lone.contains("dtx_attempt"));
        assert!(save_sql(true, false, false).contains("b AS (UPDATE dtx_branch"));
        let full = save_sql(true, true, true);
        assert!(full.contains("c AS") && full.contains("a AS"));
        // Every parameter a part uses is bound whatever the variant: the numbering of
        // the parts does not overlap.
        assert!(!BATCH_INSERTS.contains("$17") && !BATCH_SAVES.contains("$9:"));
        assert!(!BATCH_SAVES.contains("$27") && !SAVE_ROWS.contains("$12"));
    }
}
