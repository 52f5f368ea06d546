//! The SQL that PostgreSQL and SQLite share, as one macro instantiated by each backend.
//!
//! Both accept `$N` placeholders, `ON CONFLICT DO NOTHING` and `RETURNING`; what differs
//! (the clock expression, how a writer transaction begins, how due work is claimed) is
//! passed in by the backend module.

/// Decoders of `dtx_global` and `dtx_branch` rows, the same text for every backend.
macro_rules! row_decoders {
    ($db:ty) => {
        fn global_from_row(
            row: &<$db as sqlx::Database>::Row,
        ) -> Result<$crate::store::GlobalRow, $crate::store::StoreError> {
            use sqlx::Row;
            use $crate::store::Context;
            let gid: String = row.try_get("gid").ctx("decode dtx_global")?;
            let trans_type: String = row.try_get("trans_type").ctx("decode dtx_global")?;
            let status: String = row.try_get("status").ctx("decode dtx_global")?;
            Ok($crate::store::GlobalRow {
                trans_type: $crate::store::parse(&gid, &trans_type)?,
                status: $crate::store::parse(&gid, &status)?,
                options: row.try_get("options").ctx("decode dtx_global")?,
                created_at: row.try_get("created_at").ctx("decode dtx_global")?,
                updated_at: row.try_get("updated_at").ctx("decode dtx_global")?,
                finished_at: row.try_get("finished_at").ctx("decode dtx_global")?,
                timeout_at: row.try_get("timeout_at").ctx("decode dtx_global")?,
                next_attempt_at: row.try_get("next_attempt_at").ctx("decode dtx_global")?,
                attempts: row.try_get("attempts").ctx("decode dtx_global")?,
                lease_owner: row.try_get("lease_owner").ctx("decode dtx_global")?,
                lease_until: row.try_get("lease_until").ctx("decode dtx_global")?,
                version: row.try_get("version").ctx("decode dtx_global")?,
                needs_attention: row.try_get("needs_attention").ctx("decode dtx_global")?,
                rollback_reason: row.try_get("rollback_reason").ctx("decode dtx_global")?,
                gid,
            })
        }

        fn op_from_row(
            gid: &str,
            row: &<$db as sqlx::Database>::Row,
        ) -> Result<$crate::store::OpRow, $crate::store::StoreError> {
            use sqlx::Row;
            use $crate::store::Context;
            let op: String = row.try_get("op").ctx("decode dtx_branch")?;
            let status: String = row.try_get("status").ctx("decode dtx_branch")?;
            Ok($crate::store::OpRow {
                branch_id: row.try_get("branch_id").ctx("decode dtx_branch")?,
                op: $crate::store::parse(gid, &op)?,
                seq: row.try_get("seq").ctx("decode dtx_branch")?,
                target: row.try_get("target").ctx("decode dtx_branch")?,
                payload: row.try_get("payload").ctx("decode dtx_branch")?,
                status: $crate::store::parse(gid, &status)?,
                attempts: row.try_get("attempts").ctx("decode dtx_branch")?,
                next_at: row.try_get("next_at").ctx("decode dtx_branch")?,
                last_error: row.try_get("last_error").ctx("decode dtx_branch")?,
                retry_limit: row.try_get("retry_limit").ctx("decode dtx_branch")?,
                request_timeout_ms: row.try_get("request_timeout_ms").ctx("decode dtx_branch")?,
                updated_at: row.try_get("updated_at").ctx("decode dtx_branch")?,
            })
        }
    };
}

pub(crate) use row_decoders;

/// Implements [`super::Store`] for a backend struct with `read` and `write` pools.
macro_rules! sql_store {
    (
        store: $store:ty,
        db: $db:ty,
        backend: $backend:literal,
        now: $now:literal,
        begin: $begin:literal,
        claim: $claim:expr,
        migrations: $migrations:expr $(,)?
    ) => {
        $crate::store::sql::row_decoders!($db);

        async fn insert_ops(
            conn: &mut <$db as sqlx::Database>::Connection,
            gid: &str,
            ops: &[$crate::store::NewOp],
        ) -> Result<u64, $crate::store::StoreError> {
            use $crate::store::Context;
            let mut inserted = 0;
            // Bounded batches keep every statement under the backends' bind-parameter limits.
            for chunk in ops.chunks(500) {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO dtx_branch (gid, branch_id, op, seq, target, payload, status, retry_limit, request_timeout_ms, created_at, updated_at) ",
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
                        .push($now)
                        .push($now);
                });
                qb.push(" ON CONFLICT (gid, branch_id, op) DO NOTHING");
                inserted += qb.build().execute(&mut *conn).await.ctx("insert branch ops")?.rows_affected();
            }
            Ok(inserted)
        }

        /// Inserts a transaction and its ops with one statement each, inside the caller's
        /// database transaction (the portable way; a backend may do better).
        #[allow(dead_code)]
        async fn insert_in(db: &mut <$db as sqlx::Database>::Connection, tx: &$crate::store::NewTransaction) -> Result<$crate::store::Inserted, $crate::store::StoreError> {
                use $crate::store::Context;
                let created = sqlx::query(concat!(
                    "INSERT INTO dtx_global (gid, trans_type, status, options, created_at, updated_at, timeout_at, next_attempt_at, lease_owner, lease_until, version) VALUES ($1, $2, $3, $4, ",
                    $now, ", ", $now, ", ", $now, " + $5, ", $now, " + $6, $7, ", $now, " + $8, 1) ON CONFLICT (gid) DO NOTHING"
                ))
                .bind(&tx.gid)
                .bind(tx.trans_type.as_str())
                .bind(tx.status.as_str())
                .bind(&tx.options)
                .bind(tx.timeout_ms)
                .bind(tx.first_look_ms)
                .bind(tx.lease.as_ref().map(|l| l.owner.as_str()))
                .bind(tx.lease.as_ref().map(|l| l.ms))
                .execute(&mut *db)
                .await
                .ctx("insert transaction")?
                .rows_affected();
                if created == 0 {
                    let row = sqlx::query("SELECT * FROM dtx_global WHERE gid = $1")
                        .bind(&tx.gid)
                        .fetch_one(&mut *db)
                        .await
                        .ctx("read existing transaction")?;
                    return Ok($crate::store::Inserted::Exists(Box::new(global_from_row(&row)?)));
                }
                insert_ops(&mut *db, &tx.gid, &tx.ops).await?;
                Ok($crate::store::Inserted::Created { version: 1 })
            }

        /// Saves progress with one statement per changed row, inside the caller's database
        /// transaction (the portable way; a backend may do better).
        #[allow(dead_code)]
        async fn save_in(
                db: &mut <$db as sqlx::Database>::Connection,
                gid: &str,
                owner: &str,
                version: i64,
                p: &$crate::store::Progress,
            ) -> Result<$crate::store::Saved, $crate::store::StoreError> {
                use $crate::store::Context;
                let updated = sqlx::query(concat!(
                    "UPDATE dtx_global SET status = $1, needs_attention = $2, rollback_reason = COALESCE(rollback_reason, $3), ",
                    "next_attempt_at = $4, attempts = attempts + $5, version = version + 1, updated_at = ", $now, ", ",
                    "finished_at = CASE WHEN $6 THEN ", $now, " ELSE finished_at END, ",
                    "lease_owner = $7, lease_until = ", $now, " + $8 ",
                    "WHERE gid = $9 AND version = $10 AND lease_owner = $11"
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
                .execute(&mut *db)
                .await
                .ctx("save progress")?
                .rows_affected();
                if updated == 0 {
                    return Ok($crate::store::Saved::Conflict);
                }
                for op in &p.ops {
                    sqlx::query(concat!(
                        "UPDATE dtx_branch SET status = $1, attempts = $2, next_at = $3, last_error = $4, updated_at = ", $now,
                        " WHERE gid = $5 AND branch_id = $6 AND op = $7"
                    ))
                    .bind(op.status.as_str())
                    .bind(op.attempts)
                    .bind(op.next_at)
                    .bind(op.last_error.as_deref())
                    .bind(gid)
                    .bind(&op.branch_id)
                    .bind(op.op.as_str())
                    .execute(&mut *db)
                    .await
                    .ctx("save branch op")?;
                }
                if !p.attempts.is_empty() {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO dtx_attempt (gid, branch_id, op, started_at, duration_ms, outcome, error, owner) ",
                    );
                    qb.push_values(&p.attempts, |mut b, a| {
                        b.push_bind(gid.to_owned())
                            .push_bind(a.branch_id.clone())
                            .push_bind(a.op.as_str())
                            .push_bind(a.started_at)
                            .push_bind(a.duration_ms)
                            .push_bind(a.outcome)
                            .push_bind(a.error.clone())
                            .push_bind(owner.to_owned());
                    });
                    qb.build().execute(&mut *db).await.ctx("record attempts")?;
                }
                Ok($crate::store::Saved::Ok(version + 1))
            }


        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn migrate(&self) -> Result<(), $crate::store::StoreError> {
                let mut migrator = sqlx::migrate::Migrator::with_migrations($migrations);
                migrator.dangerous_set_table_name("dtx_schema_migrations");
                migrator.run(&self.write).await?;
                Ok(())
            }

            async fn now(&self) -> Result<i64, $crate::store::StoreError> {
                use $crate::store::Context;
                sqlx::query_scalar(concat!("SELECT ", $now)).fetch_one(&self.read).await.ctx("read the clock")
            }

            async fn insert(&self, tx: &$crate::store::NewTransaction) -> Result<$crate::store::Inserted, $crate::store::StoreError> {
                self.insert_tx(tx).await
            }

            async fn load(&self, gid: &str) -> Result<Option<($crate::store::GlobalRow, Vec<$crate::store::OpRow>)>, $crate::store::StoreError> {
                use $crate::store::Context;
                let Some(row) = sqlx::query("SELECT * FROM dtx_global WHERE gid = $1")
                    .bind(gid)
                    .fetch_optional(&self.read)
                    .await
                    .ctx("load transaction")?
                else {
                    return Ok(None);
                };
                let global = global_from_row(&row)?;
                let rows = sqlx::query("SELECT * FROM dtx_branch WHERE gid = $1 ORDER BY seq, branch_id, op")
                    .bind(gid)
                    .fetch_all(&self.read)
                    .await
                    .ctx("load branch ops")?;
                let ops = rows.iter().map(|r| op_from_row(gid, r)).collect::<Result<Vec<_>, _>>()?;
                Ok(Some((global, ops)))
            }

            async fn add_ops(&self, gid: &str, ops: &[$crate::store::NewOp]) -> Result<$crate::store::Added, $crate::store::StoreError> {
                use $crate::store::Context;
                let mut db = self.write.begin_with($begin).await.ctx("begin register branch")?;
                // Bumping the version serialises registration against submit, abort and
                // the timeout: whichever writes second sees the change.
                let touched = sqlx::query(concat!(
                    "UPDATE dtx_global SET version = version + 1, updated_at = ", $now,
                    " WHERE gid = $1 AND status = 'prepared'"
                ))
                .bind(gid)
                .execute(&mut *db)
                .await
                .ctx("lock prepared transaction")?
                .rows_affected();
                if touched == 0 {
                    let status: Option<String> = sqlx::query_scalar("SELECT status FROM dtx_global WHERE gid = $1")
                        .bind(gid)
                        .fetch_optional(&mut *db)
                        .await
                        .ctx("read status")?;
                    return Ok(match status {
                        None => $crate::store::Added::NotFound,
                        Some(s) => $crate::store::Added::NotPrepared($crate::store::parse(gid, &s)?),
                    });
                }
                // Registration order, assigned under the row lock taken above: TCC cancels
                // run in reverse of it.
                let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM dtx_branch WHERE gid = $1")
                    .bind(gid)
                    .fetch_one(&mut *db)
                    .await
                    .ctx("next branch seq")?;
                let ops: Vec<$crate::store::NewOp> = ops.iter().cloned().map(|o| $crate::store::NewOp { seq: next, ..o }).collect();
                let added = insert_ops(&mut db, gid, &ops).await?;
                db.commit().await.ctx("commit register branch")?;
                Ok($crate::store::Added::Added(added))
            }

            async fn transition(
                &self,
                gid: &str,
                from: dtx::GlobalStatus,
                to: dtx::GlobalStatus,
                lease: &$crate::store::Lease,
                rollback_reason: Option<&str>,
            ) -> Result<Option<i64>, $crate::store::StoreError> {
                use $crate::store::Context;
                sqlx::query_scalar(concat!(
                    "UPDATE dtx_global SET status = $3, version = version + 1, updated_at = ", $now,
                    ", next_attempt_at = ", $now, ", lease_owner = $4, lease_until = ", $now,
                    " + $5, rollback_reason = COALESCE(rollback_reason, $6) WHERE gid = $1 AND status = $2 RETURNING version"
                ))
                .bind(gid)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(&lease.owner)
                .bind(lease.ms)
                .bind(rollback_reason)
                .fetch_optional(&self.write)
                .await
                .ctx("move transaction")
            }

            async fn save(
                &self,
                gid: &str,
                owner: &str,
                version: i64,
                p: &$crate::store::Progress,
            ) -> Result<$crate::store::Saved, $crate::store::StoreError> {
                self.save_progress(gid, owner, version, p).await
            }

            async fn write_batch(
                &self,
                inserts: &[$crate::store::NewTransaction],
                saves: &[$crate::store::SaveRequest],
            ) -> Result<(Vec<$crate::store::Inserted>, Vec<$crate::store::Saved>), $crate::store::StoreError> {
                self.write_batch_tx(inserts, saves).await
            }

            async fn claim_due(&self, lease: &$crate::store::Lease, limit: i64) -> Result<Vec<String>, $crate::store::StoreError> {
                use $crate::store::Context;
                sqlx::query_scalar($claim)
                    .bind(&lease.owner)
                    .bind(lease.ms)
                    .bind(limit)
                    .fetch_all(&self.write)
                    .await
                    .ctx("claim due transactions")
            }

            async fn operate(
                &self,
                gid: &str,
                action: $crate::store::OperatorAction,
                actor: &str,
                reason: &str,
            ) -> Result<$crate::store::Operated, $crate::store::StoreError> {
                use $crate::store::{Context, OperatorAction, Operated};
                let mut db = self.write.begin_with($begin).await.ctx("begin operator action")?;
                let moved = match action {
                    OperatorAction::RetryNow => sqlx::query(concat!(
                        "UPDATE dtx_global SET needs_attention = NULL, next_attempt_at = ", $now,
                        ", lease_owner = NULL, lease_until = NULL, version = version + 1, updated_at = ", $now,
                        " WHERE gid = $1 AND status NOT IN ('succeeded', 'failed')"
                    ))
                    .bind(gid),
                    OperatorAction::ForceAbort => sqlx::query(concat!(
                        "UPDATE dtx_global SET status = 'aborting', needs_attention = NULL, rollback_reason = COALESCE(rollback_reason, $2), ",
                        "next_attempt_at = ", $now, ", lease_owner = NULL, lease_until = NULL, version = version + 1, updated_at = ", $now,
                        " WHERE gid = $1 AND (status IN ('prepared', 'aborting') OR (status = 'submitted' AND trans_type = 'saga'))"
                    ))
                    .bind(gid)
                    .bind(format!("forced by {actor}: {reason}")),
                }
                .execute(&mut *db)
                .await
                .ctx("operator action")?
                .rows_affected();
                if moved == 0 {
                    let row: Option<(String, String)> = sqlx::query_as("SELECT status, trans_type FROM dtx_global WHERE gid = $1")
                        .bind(gid)
                        .fetch_optional(&mut *db)
                        .await
                        .ctx("read status")?;
                    return Ok(match row {
                        None => Operated::NotFound,
                        Some((s, t)) => Operated::Refused($crate::store::parse(gid, &s)?, $crate::store::parse(gid, &t)?),
                    });
                }
                // A fresh budget for what is still to do; a phase-2 op that answered FAILURE
                // is tried again (the operator says the participant is fixed).
                sqlx::query(concat!(
                    "UPDATE dtx_branch SET attempts = 0, next_at = 0, status = 'pending', updated_at = ", $now,
                    " WHERE gid = $1 AND (status = 'pending' OR (status = 'failed' AND op IN ('compensate', 'confirm', 'cancel', 'commit', 'rollback')))"
                ))
                .bind(gid)
                .execute(&mut *db)
                .await
                .ctx("reset branch budgets")?;
                sqlx::query(concat!("INSERT INTO dtx_audit (at, actor, action, gid, reason) VALUES (", $now, ", $1, $2, $3, $4)"))
                    .bind(actor)
                    .bind(action.as_str())
                    .bind(gid)
                    .bind(reason)
                    .execute(&mut *db)
                    .await
                    .ctx("audit")?;
                let status: String = sqlx::query_scalar("SELECT status FROM dtx_global WHERE gid = $1")
                    .bind(gid)
                    .fetch_one(&mut *db)
                    .await
                    .ctx("read status")?;
                db.commit().await.ctx("commit operator action")?;
                Ok(Operated::Done($crate::store::parse(gid, &status)?))
            }

            async fn audit(&self, gid: &str) -> Result<Vec<$crate::store::AuditRow>, $crate::store::StoreError> {
                use $crate::store::Context;
                let rows: Vec<(i64, String, String, String)> =
                    sqlx::query_as("SELECT at, actor, action, reason FROM dtx_audit WHERE gid = $1 ORDER BY id")
                        .bind(gid)
                        .fetch_all(&self.read)
                        .await
                        .ctx("read audit")?;
                Ok(rows.into_iter().map(|(at, actor, action, reason)| $crate::store::AuditRow { at, actor, action, reason }).collect())
            }

            async fn release_leases(&self, owner: &str) -> Result<u64, $crate::store::StoreError> {
                use $crate::store::Context;
                Ok(sqlx::query(
                    "UPDATE dtx_global SET lease_owner = NULL, lease_until = NULL, version = version + 1 \
                     WHERE lease_owner = $1 AND status NOT IN ('succeeded', 'failed')",
                )
                .bind(owner)
                .execute(&self.write)
                .await
                .ctx("release leases")?
                .rows_affected())
            }

            async fn list(&self, f: &$crate::store::ListFilter) -> Result<Vec<$crate::store::GlobalRow>, $crate::store::StoreError> {
                use $crate::store::Context;
                let (before_at, before_gid) = match &f.before {
                    Some((at, gid)) => (Some(*at), Some(gid.as_str())),
                    None => (None, None),
                };
                let rows = sqlx::query(
                    "SELECT * FROM dtx_global WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR trans_type = $2) \
                     AND ($3 IS NULL OR ($3 = (needs_attention IS NOT NULL))) \
                     AND ($4 IS NULL OR created_at < $4 OR (created_at = $4 AND gid < $5)) \
                     ORDER BY created_at DESC, gid DESC LIMIT $6",
                )
                .bind(f.status.map(|s| s.as_str()))
                .bind(f.trans_type.map(|t| t.as_str()))
                .bind(f.needs_attention)
                .bind(before_at)
                .bind(before_gid)
                .bind(f.limit)
                .fetch_all(&self.read)
                .await
                .ctx("list transactions")?;
                rows.iter().map(global_from_row).collect()
            }
        }
    };
}

pub(crate) use sql_store;

/// Builds the embedded migrations of one backend from `(version, description, sql)`.
pub(crate) fn migrations(
    files: &[(i64, &'static str, &'static str)],
) -> Vec<sqlx::migrate::Migration> {
    files
        .iter()
        .map(|&(version, description, sql)| {
            sqlx::migrate::Migration::new(
                version,
                description.into(),
                sqlx::migrate::MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(sql),
                false,
            )
        })
        .collect()
}
