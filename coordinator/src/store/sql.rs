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

        /// A transaction's branch rows to its ops, deferred compensations included.
        fn ops_from_rows(
            gid: &str,
            rows: &[<$db as sqlx::Database>::Row],
        ) -> Result<Vec<$crate::store::OpRow>, $crate::store::StoreError> {
            use sqlx::Row;
            use $crate::store::Context;
            let rows = rows
                .iter()
                .map(|r| {
                    let compensate: Option<String> =
                        r.try_get("compensate").ctx("decode dtx_branch")?;
                    Ok((op_from_row(gid, r)?, compensate))
                })
                .collect::<Result<Vec<_>, $crate::store::StoreError>>()?;
            Ok($crate::store::with_deferred_compensations(rows))
        }
    };
}

pub(crate) use row_decoders;

/// Implements [`super::Store`] for a backend struct with `read` and `write` pools; `admin`
/// names the pool of the dashboard's and admin API's queries (`read`, or a pool of its own
/// planned differently).
macro_rules! sql_store {
    (
        store: $store:ty,
        db: $db:ty,
        backend: $backend:literal,
        now: $now:literal,
        begin: $begin:literal,
        lock: $lock:literal,
        claim: $claim:expr,
        migrations: $migrations:expr,
        admin: $admin:ident $(,)?
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
                    "INSERT INTO dtx_branch (gid, branch_id, op, seq, target, payload, status, retry_limit, request_timeout_ms, compensate, created_at, updated_at) ",
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
                .bind(p.calls)
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
                    // A compensation first written gets its row, from its action's, with its
                    // new state; any other op (or a compensation with a row already) is updated.
                    let mut written = 0;
                    if op.op == dtx::Op::Compensate {
                        written = sqlx::query(concat!(
                            "INSERT INTO dtx_branch (gid, branch_id, op, seq, target, payload, status, attempts, next_at, last_error, retry_limit, request_timeout_ms, created_at, updated_at) ",
                            "SELECT a.gid, a.branch_id, 'compensate', a.seq, a.compensate, a.payload, $1, $2, $3, $4, a.retry_limit, a.request_timeout_ms, a.created_at, ", $now,
                            " FROM dtx_branch a LEFT JOIN dtx_branch c ON c.gid = a.gid AND c.branch_id = a.branch_id AND c.op = 'compensate' ",
                            "WHERE a.gid = $5 AND a.branch_id = $6 AND a.op = 'action' AND a.compensate IS NOT NULL AND c.gid IS NULL"
                        ))
                        .bind(op.status.as_str())
                        .bind(op.attempts)
                        .bind(op.next_at)
                        .bind(op.last_error.as_deref())
                        .bind(gid)
                        .bind(&op.branch_id)
                        .execute(&mut *db)
                        .await
                        .ctx("write deferred compensation")?
                        .rows_affected();
                    }
                    if written == 0 {
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
                let mut ops = ops_from_rows(gid, &rows)?;
                $crate::store::imply_first_call_successes(&global, &mut ops);
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

            async fn operate(
                &self,
                gid: &str,
                action: &$crate::store::OperatorAction,
                actor: &str,
                reason: &str,
            ) -> Result<$crate::store::Operated, $crate::store::StoreError> {
                self.admin_operate(gid, action, actor, reason).await
            }
            async fn audit(&self, gid: &str) -> Result<Vec<$crate::store::AuditRow>, $crate::store::StoreError> {
                self.admin_audit(gid).await
            }
            async fn list(&self, f: &$crate::store::ListFilter) -> Result<Vec<$crate::store::GlobalRow>, $crate::store::StoreError> {
                self.admin_list(f).await
            }
            async fn attempts(&self, gid: &str) -> Result<Vec<$crate::store::AttemptRow>, $crate::store::StoreError> {
                self.admin_attempts(gid).await
            }
            async fn overview(&self, now: i64) -> Result<$crate::store::Overview, $crate::store::StoreError> {
                self.admin_overview(now).await
            }
            async fn gauges(&self) -> Result<$crate::store::Gauges, $crate::store::StoreError> {
                self.admin_gauges().await
            }
        }

        $crate::store::sql::admin_queries! {
            store: $store,
            db: $db,
            write: write,
            read: $admin,
            now: $now,
            begin: $begin,
            lock: $lock,
            minute: "finished_at / 60000",
        }
    };
}

pub(crate) use sql_store;

/// The operator's queries and actions, shared by every backend (the query builder writes
/// each one's placeholders): `write`/`read` name the pools, `now` the database clock in
/// SQL, `begin` the statement opening a write transaction, `lock` the suffix locking a row
/// read in it, `minute` the minute of `finished_at` in integer arithmetic.
macro_rules! admin_queries {
    (
        store: $store:ty,
        db: $db:ty,
        write: $write:ident,
        read: $read:ident,
        now: $now:expr,
        begin: $begin:expr,
        lock: $lock:literal,
        minute: $minute:literal $(,)?
    ) => {
        impl $store {
        async fn admin_operate(
            &self,
            gid: &str,
            action: &$crate::store::OperatorAction,
            actor: &str,
            reason: &str,
        ) -> Result<$crate::store::Operated, $crate::store::StoreError> {
            use dtx::OpStatus;
            use $crate::store::{Context, Operated, OperatorAction};
            type Qb = sqlx::QueryBuilder<$db>;
            let mut db = self.$write.begin_with($begin).await.ctx("begin operator action")?;
            let mut qb = Qb::new("SELECT status, trans_type, options FROM dtx_global WHERE gid = ");
            qb.push_bind(gid.to_owned()).push($lock);
            let row: Option<(String, String, String)> = qb
                .build_query_as()
                .fetch_optional(&mut *db)
                .await
                .ctx("read transaction")?;
            let Some((status, trans_type, options)) = row else {
                return Ok(Operated::NotFound);
            };
            let status: dtx::GlobalStatus = $crate::store::parse(gid, &status)?;
            let trans_type: dtx::TransType = $crate::store::parse(gid, &trans_type)?;
            if !action.allowed(status, trans_type) {
                return Ok(Operated::Refused(status, trans_type));
            }
            // Every op an operator may act on has a row: deferred compensations get theirs.
            let mut qb = Qb::new(
                "INSERT INTO dtx_branch (gid, branch_id, op, seq, target, payload, status, retry_limit, request_timeout_ms, created_at, updated_at) \
                 SELECT a.gid, a.branch_id, 'compensate', a.seq, a.compensate, a.payload, 'pending', a.retry_limit, a.request_timeout_ms, a.created_at, ",
            );
            qb.push($now)
                .push(" FROM dtx_branch a LEFT JOIN dtx_branch c ON c.gid = a.gid AND c.branch_id = a.branch_id AND c.op = 'compensate' WHERE a.gid = ")
                .push_bind(gid.to_owned())
                .push(" AND a.op = 'action' AND a.compensate IS NOT NULL AND c.gid IS NULL");
            qb.build().execute(&mut *db).await.ctx("write deferred compensations")?;
            if let Some((branch_id, op)) = action.target_op() {
                let mut qb = Qb::new("SELECT status FROM dtx_branch WHERE gid = ");
                qb.push_bind(gid.to_owned())
                    .push(" AND branch_id = ")
                    .push_bind(branch_id.to_owned())
                    .push(" AND op = ")
                    .push_bind(op.as_str().to_owned());
                let op_status: Option<String> = qb
                    .build_query_scalar()
                    .fetch_optional(&mut *db)
                    .await
                    .ctx("read branch op")?;
                let Some(op_status) = op_status else {
                    return Ok(Operated::NoSuchOp(None));
                };
                let op_status: OpStatus = $crate::store::parse(gid, &op_status)?;
                // Only what is still to do (or a phase-2 op that answered FAILURE) can be
                // retried or marked done; a saga action that failed decided the rollback.
                let open = op_status == OpStatus::Pending
                    || (op_status == OpStatus::Failed && op.is_phase_two());
                if !open {
                    return Ok(Operated::NoSuchOp(Some(op_status)));
                }
            }
            let mut qb = Qb::new("UPDATE dtx_global SET needs_attention = NULL, next_attempt_at = ");
            qb.push($now)
                .push(", lease_owner = NULL, lease_until = NULL, version = version + 1, updated_at = ")
                .push($now);
            match action {
                OperatorAction::ForceAbort => {
                    qb.push(", status = 'aborting', rollback_reason = COALESCE(rollback_reason, ")
                        .push_bind(format!("forced by {actor}: {reason}"))
                        .push(")");
                }
                OperatorAction::SetBudget { retry_limit, max_age_ms } => {
                    let mut stored: $crate::service::StoredOptions = serde_json::from_str(&options)
                        .map_err(|e| $crate::store::StoreError::Corrupt {
                            gid: gid.to_owned(),
                            detail: e.to_string(),
                        })?;
                    if let Some(l) = retry_limit {
                        stored.policy.retry_limit = *l;
                    }
                    if let Some(a) = max_age_ms {
                        stored.policy.max_age_ms = *a;
                    }
                    let text = serde_json::to_string(&stored).map_err(|e| {
                        $crate::store::StoreError::Corrupt { gid: gid.to_owned(), detail: e.to_string() }
                    })?;
                    qb.push(", options = ").push_bind(text);
                }
                _ => {}
            }
            qb.push(" WHERE gid = ").push_bind(gid.to_owned());
            qb.build().execute(&mut *db).await.ctx("operator action")?;

            let mut qb = Qb::new("UPDATE dtx_branch SET updated_at = ");
            qb.push($now);
            match action {
                OperatorAction::MarkDone { .. } => {
                    qb.push(", status = 'succeeded', next_at = 0, last_error = ")
                        .push_bind(format!("marked done by {actor}: {reason}"));
                }
                OperatorAction::SetBudget { retry_limit, .. } => match retry_limit {
                    // Ops with a limit of their own get the new one.
                    Some(l) => {
                        qb.push(", retry_limit = CASE WHEN retry_limit IS NULL THEN NULL ELSE ")
                            .push_bind(i64::from(*l))
                            .push(" END, next_at = 0");
                    }
                    None => {
                        qb.push(", next_at = 0");
                    }
                },
                // A fresh budget for what is still to do; a phase-2 op that answered
                // FAILURE is tried again (the operator says the participant is fixed).
                _ => {
                    qb.push(", attempts = 0, next_at = 0, status = 'pending'");
                }
            }
            qb.push(" WHERE gid = ").push_bind(gid.to_owned());
            if let Some((branch_id, op)) = action.target_op() {
                qb.push(" AND branch_id = ")
                    .push_bind(branch_id.to_owned())
                    .push(" AND op = ")
                    .push_bind(op.as_str().to_owned());
            }
            qb.push(" AND (status = 'pending' OR (status = 'failed' AND op IN ('compensate', 'confirm', 'cancel', 'commit', 'rollback')))");
            qb.build().execute(&mut *db).await.ctx("update branch ops")?;

            let mut qb = Qb::new("INSERT INTO dtx_audit (at, actor, action, gid, reason, detail) VALUES (");
            qb.push($now)
                .push(", ")
                .push_bind(actor.to_owned())
                .push(", ")
                .push_bind(action.as_str().to_owned())
                .push(", ")
                .push_bind(gid.to_owned())
                .push(", ")
                .push_bind(reason.to_owned())
                .push(", ")
                .push_bind(action.detail())
                .push(")");
            qb.build().execute(&mut *db).await.ctx("audit")?;
            let mut qb = Qb::new("SELECT status FROM dtx_global WHERE gid = ");
            qb.push_bind(gid.to_owned());
            let status: String = qb
                .build_query_scalar()
                .fetch_one(&mut *db)
                .await
                .ctx("read status")?;
            db.commit().await.ctx("commit operator action")?;
            Ok(Operated::Done($crate::store::parse(gid, &status)?))
        }

        async fn admin_audit(&self, gid: &str) -> Result<Vec<$crate::store::AuditRow>, $crate::store::StoreError> {
            use $crate::store::Context;
            let mut qb = sqlx::QueryBuilder::<$db>::new(
                "SELECT at, actor, action, reason, detail FROM dtx_audit WHERE gid = ",
            );
            qb.push_bind(gid.to_owned()).push(" ORDER BY id");
            let rows: Vec<(i64, String, String, String, Option<String>)> = qb
                .build_query_as()
                .fetch_all(&self.$read)
                .await
                .ctx("read audit")?;
            Ok(rows
                .into_iter()
                .map(|(at, actor, action, reason, detail)| $crate::store::AuditRow { at, actor, action, reason, detail })
                .collect())
        }

        async fn admin_list(&self, f: &$crate::store::ListFilter) -> Result<Vec<$crate::store::GlobalRow>, $crate::store::StoreError> {
            use $crate::store::Context;
            let rows = $crate::store::list_query::<$db>(f)
                .build()
                .fetch_all(&self.$read)
                .await
                .ctx("list transactions")?;
            rows.iter().map(global_from_row).collect()
        }

        async fn admin_attempts(&self, gid: &str) -> Result<Vec<$crate::store::AttemptRow>, $crate::store::StoreError> {
            use $crate::store::Context;
            let mut qb = sqlx::QueryBuilder::<$db>::new(
                "SELECT branch_id, op, started_at, duration_ms, outcome, error, owner FROM dtx_attempt WHERE gid = ",
            );
            qb.push_bind(gid.to_owned()).push(" ORDER BY id LIMIT 1000");
            let rows: Vec<(String, String, i64, i64, String, Option<String>, String)> = qb
                .build_query_as()
                .fetch_all(&self.$read)
                .await
                .ctx("read attempts")?;
            Ok(rows
                .into_iter()
                .map(|(branch_id, op, started_at, duration_ms, outcome, error, owner)| $crate::store::AttemptRow {
                    branch_id, op, started_at, duration_ms, outcome, error, owner,
                })
                .collect())
        }

        async fn admin_overview(&self, now: i64) -> Result<$crate::store::Overview, $crate::store::StoreError> {
            use $crate::store::{Context, MinuteBucket, StatusCount};
            let counts: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT status, trans_type, COUNT(*) FROM dtx_global GROUP BY status, trans_type",
            )
            .fetch_all(&self.$read)
            .await
            .ctx("count transactions")?;
            let counts = counts
                .into_iter()
                .map(|(s, t, count)| {
                    Ok(StatusCount {
                        status: $crate::store::parse("?", &s)?,
                        trans_type: $crate::store::parse("?", &t)?,
                        count,
                    })
                })
                .collect::<Result<Vec<_>, $crate::store::StoreError>>()?;
            // Non-final rows are exactly those due (next_attempt_at set) or parked
            // (needs_attention set): both are indexed, the final millions are not read.
            let rows = |sql: &'static str| async move {
                let r = sqlx::query(sql).fetch_all(&self.$read).await.ctx("list stuck transactions")?;
                r.iter().map(global_from_row).collect::<Result<Vec<_>, _>>()
            };
            let needs_attention = rows(
                "SELECT * FROM dtx_global WHERE needs_attention IS NOT NULL ORDER BY created_at, gid LIMIT 20",
            )
            .await?;
            let retrying = rows(
                "SELECT * FROM dtx_global WHERE next_attempt_at IS NOT NULL AND EXISTS (SELECT 1 FROM dtx_branch b                  WHERE b.gid = dtx_global.gid AND b.status = 'pending' AND b.last_error IS NOT NULL)                  ORDER BY created_at, gid LIMIT 20",
            )
            .await?;
            let oldest = rows(
                "SELECT * FROM dtx_global WHERE next_attempt_at IS NOT NULL OR needs_attention IS NOT NULL                  ORDER BY created_at, gid LIMIT 20",
            )
            .await?;
            let since = (now / 60_000 - 59) * 60_000;
            let mut qb = sqlx::QueryBuilder::<$db>::new(concat!(
                "SELECT ", $minute, " AS m, status, COUNT(*) FROM dtx_global WHERE finished_at >= "
            ));
            qb.push_bind(since)
                .push(concat!(" GROUP BY ", $minute, ", status"));
            let buckets: Vec<(i64, String, i64)> = qb
                .build_query_as()
                .fetch_all(&self.$read)
                .await
                .ctx("count finished transactions")?;
            let mut finished: Vec<MinuteBucket> = Vec::new();
            for (m, status, n) in buckets {
                let minute = m * 60_000;
                let i = match finished.iter().position(|b| b.minute == minute) {
                    Some(i) => i,
                    None => {
                        finished.push(MinuteBucket { minute, ..Default::default() });
                        finished.len() - 1
                    }
                };
                if status == "succeeded" {
                    finished[i].succeeded += n;
                } else {
                    finished[i].failed += n;
                }
            }
            finished.sort_by_key(|b| b.minute);
            Ok($crate::store::Overview { counts, needs_attention, retrying, oldest, finished })
        }

        async fn admin_gauges(&self) -> Result<$crate::store::Gauges, $crate::store::StoreError> {
            use $crate::store::Context;
            let (in_flight, needs_attention, oldest_created_at): (i64, i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), COUNT(needs_attention), MIN(created_at) FROM dtx_global                  WHERE next_attempt_at IS NOT NULL OR needs_attention IS NOT NULL",
            )
            .fetch_one(&self.$read)
            .await
            .ctx("read gauges")?;
            Ok($crate::store::Gauges { in_flight, needs_attention, oldest_created_at })
        }
        }
    };
}

pub(crate) use admin_queries;

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
