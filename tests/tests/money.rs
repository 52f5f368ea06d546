//! Money moves between accounts with TCC and sagas through a real coordinator, while the
//! participants get duplicate deliveries (a request handled twice at once) and lose
//! responses after committing (so the coordinator or initiator calls again). With the
//! barrier, the total is conserved, nothing is frozen at the end, and no op takes effect
//! twice — on PostgreSQL, MariaDB and SQLite participant databases.

macro_rules! money_tests {
    ($module:ident, $db:ty, $fresh:path, $mysql:expr) => {
        mod $module {
            use std::sync::Arc;
            use std::time::Duration;

            use dtx::api::TxOptions;
            use dtx::barrier;
            use dtx::{BranchContext, BranchError, BranchResult, GlobalStatus, SagaParticipant, TccParticipant};
            use dtx_tests::{Backend, CoordinatorProc};
            use serde::{Deserialize, Serialize};
            use sqlx::AssertSqlSafe;

            type Pool = sqlx::Pool<$db>;
            type Conn = <$db as sqlx::Database>::Connection;

            /// `$1`-style SQL, rewritten to `?` for MySQL.
            fn sql(s: &str) -> AssertSqlSafe<String> {
                if $mysql {
                    let mut out = String::new();
                    let mut chars = s.chars().peekable();
                    while let Some(c) = chars.next() {
                        if c == '$' {
                            while chars.peek().is_some_and(char::is_ascii_digit) {
                                chars.next();
                            }
                            out.push('?');
                        } else {
                            out.push(c);
                        }
                    }
                    AssertSqlSafe(out)
                } else {
                    AssertSqlSafe(s.to_owned())
                }
            }

            #[derive(Debug, Clone, Serialize, Deserialize)]
            struct Transfer {
                from: String,
                to: String,
                amount: i64,
            }

            /// Writes a ledger row: which gid/op moved how much on which account.
            async fn ledger(conn: &mut Conn, ctx: &BranchContext, account: &str, delta: i64) -> Result<(), BranchError> {
                sqlx::query(sql("INSERT INTO ledger (gid, op, account, delta) VALUES ($1, $2, $3, $4)"))
                    .bind(&ctx.gid)
                    .bind(ctx.op.as_str())
                    .bind(account)
                    .bind(delta)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            /// Participants misbehave the way networks do: sometimes a request is handled
            /// twice at once, sometimes the answer is lost after the work committed.
            async fn unreliable<F: std::future::Future<Output = BranchResult>>(op: impl Fn() -> F) -> BranchResult {
                match fastrand::u8(0..100) {
                    0..20 => {
                        let (a, _b) = tokio::join!(op(), op());
                        a
                    }
                    20..35 => {
                        op().await?;
                        Err(BranchError::transient("response lost"))
                    }
                    _ => op().await,
                }
            }

            /// Debits with TCC: try moves the amount from `balance` to `frozen`.
            struct Debit(Pool);
            /// Credits with TCC: confirm adds the amount.
            struct Credit(Pool);

            #[async_trait::async_trait]
            impl TccParticipant for Debit {
                type Request = Transfer;
                async fn try_(&self, ctx: &BranchContext, t: Transfer) -> BranchResult {
                    unreliable(|| async {
                        barrier::call(&self.0, ctx, async |c: &mut Conn| {
                            let n = sqlx::query(sql("UPDATE account SET balance = balance - $1, frozen = frozen + $2 WHERE id = $3 AND balance >= $4"))
                                .bind(t.amount).bind(t.amount).bind(&t.from).bind(t.amount)
                                .execute(&mut *c).await?.rows_affected();
                            if n == 0 {
                                return Err(BranchError::failure("insufficient funds"));
                            }
                            ledger(c, ctx, &t.from, -t.amount).await
                        }).await?;
                        Ok(())
                    }).await
                }
                async fn confirm(&self, ctx: &BranchContext, t: Transfer) -> BranchResult {
                    unreliable(|| async {
                        barrier::call(&self.0, ctx, async |c: &mut Conn| {
                            sqlx::query(sql("UPDATE account SET frozen = frozen - $1 WHERE id = $2")).bind(t.amount).bind(&t.from).execute(&mut *c).await?;
                            Ok::<_, BranchError>(())
                        }).await?;
                        Ok(())
                    }).await
                }
                async fn cancel(&self, ctx: &BranchContext, t: Transfer) -> BranchResult {
                    unreliable(|| async {
                        barrier::call(&self.0, ctx, async |c: &mut Conn| {
                            sqlx::query(sql("UPDATE account SET balance = balance + $1, frozen = frozen - $2 WHERE id = $3"))
                                .bind(t.amount).bind(t.amount).bind(&t.from).execute(&mut *c).await?;
                            ledger(c, ctx, &t.from, t.amount).await
                        }).await?;
                        Ok(())
                    }).await
                }
            }

            #[async_trait::async_trait]
            impl TccParticipant for Credit {
                type Request = Transfer;
                async fn try_(&self, ctx: &BranchContext, _t: Transfer) -> BranchResult {
                    unreliable(|| async {
                        barrier::call(&self.0, ctx, async |_c: &mut Conn| Ok::<_, BranchError>(())).await?;
                        Ok(())
                    }).await
                }
                async fn confirm(&self, ctx: &BranchContext, t: Transfer) -> BranchResult {
                    unreliable(|| async {
                        barrier::call(&self.0, ctx, async |c: &mut Conn| {
                            sqlx::query(sql("UPDATE account SET balance = balance + $1 WHERE id = $2")).bind(t.amount).bind(&t.to).execute(&mut *c).await?;
                            ledger(c, ctx, &t.to, t.amount).await
                        }).await?;
                        Ok(())
                    }).await
                }
                async fn cancel(&self, ctx: &BranchContext, _t: Transfer) -> BranchResult {
                    unreliable(|| async {
                        barrier::call(&self.0, ctx, async |_c: &mut Conn| Ok::<_, BranchError>(())).await?;
                        Ok(())
                    }).await
                }
            }

            /// A saga step that moves `sign * amount` on one side of the transfer.
            struct Move {
                pool: Pool,
                debit: bool,
            }

            #[async_trait::async_trait]
            impl SagaParticipant for Move {
                type Request = Transfer;
                async fn action(&self, ctx: &BranchContext, t: Transfer) -> BranchResult {
                    unreliable(|| async {
                        barrier::call(&self.pool, ctx, async |c: &mut Conn| {
                            let (account, delta) = if self.debit { (&t.from, -t.amount) } else { (&t.to, t.amount) };
                            let n = sqlx::query(sql("UPDATE account SET balance = balance + $1 WHERE id = $2 AND balance + $3 >= 0"))
                                .bind(delta).bind(account).bind(delta).execute(&mut *c).await?.rows_affected();
                            if n == 0 {
                                return Err(BranchError::failure("insufficient funds"));
                            }
                            ledger(c, ctx, account, delta).await
                        }).await?;
                        Ok(())
                    }).await
                }
                async fn compensate(&self, ctx: &BranchContext, t: Transfer) -> BranchResult {
                    unreliable(|| async {
                        barrier::call(&self.pool, ctx, async |c: &mut Conn| {
                            let (account, delta) = if self.debit { (&t.from, t.amount) } else { (&t.to, -t.amount) };
                            sqlx::query(sql("UPDATE account SET balance = balance + $1 WHERE id = $2")).bind(delta).bind(account).execute(&mut *c).await?;
                            ledger(c, ctx, account, delta).await
                        }).await?;
                        Ok(())
                    }).await
                }
            }

            const ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "dave"];
            const START: i64 = 100;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn total_is_conserved_under_duplicates_and_lost_answers() {
                let (pool, _pdb) = $fresh().await;
                barrier::migrate(&pool).await.unwrap();
                for ddl in [
                    "CREATE TABLE account (id VARCHAR(32) PRIMARY KEY, balance BIGINT NOT NULL, frozen BIGINT NOT NULL)",
                    "CREATE TABLE ledger (gid VARCHAR(128) NOT NULL, op VARCHAR(16) NOT NULL, account VARCHAR(32) NOT NULL, delta BIGINT NOT NULL)",
                ] {
                    sqlx::raw_sql(ddl).execute(&pool).await.unwrap();
                }
                for a in ACCOUNTS {
                    sqlx::query(sql("INSERT INTO account (id, balance, frozen) VALUES ($1, $2, 0)")).bind(a).bind(START).execute(&pool).await.unwrap();
                }
                let app = axum::Router::new()
                    .nest("/tcc/debit", dtx::axum::tcc_router(Debit(pool.clone())))
                    .nest("/tcc/credit", dtx::axum::tcc_router(Credit(pool.clone())))
                    .nest("/saga/debit", dtx::axum::saga_router(Move { pool: pool.clone(), debit: true }))
                    .nest("/saga/credit", dtx::axum::saga_router(Move { pool: pool.clone(), debit: false }));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let busi = format!("http://{}", listener.local_addr().unwrap());
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

                let cdb = Backend::Sqlite.fresh().await;
                let coord = CoordinatorProc::start(&cdb.url, &[]).await;
                let client = coord.client();
                let quick = TxOptions { retry_interval_ms: Some(20), retry_cap_ms: Some(200), ..Default::default() };

                let transfers = 60;
                let sem = Arc::new(tokio::sync::Semaphore::new(8));
                let mut tasks = Vec::new();
                for i in 0..transfers {
                    let (client, busi, quick, sem) = (client.clone(), busi.clone(), quick.clone(), Arc::clone(&sem));
                    tasks.push(tokio::spawn(async move {
                        let _permit = sem.acquire().await.unwrap();
                        let from = fastrand::usize(0..ACCOUNTS.len());
                        let to = (from + 1 + fastrand::usize(0..ACCOUNTS.len() - 1)) % ACCOUNTS.len();
                        let t = Transfer { from: ACCOUNTS[from].into(), to: ACCOUNTS[to].into(), amount: fastrand::i64(1..80) };
                        if i % 2 == 0 {
                            // A refused or failed try aborts the transaction: an Err here
                            // is an expected outcome, checked below through the coordinator.
                            let r = dtx::Tcc::run(&client, quick, true, async |tcc: &dtx::Tcc| {
                                tcc.call_branch(&t, &format!("{busi}/tcc/debit")).await?;
                                tcc.call_branch(&t, &format!("{busi}/tcc/credit")).await?;
                                Ok(())
                            })
                            .await;
                            if let Ok((gid, status)) = r {
                                assert_eq!(status, GlobalStatus::Succeeded, "{gid}");
                            }
                        } else {
                            let saga = dtx::Saga::new()
                                .step(&format!("{busi}/saga/debit"), &t).unwrap()
                                .step(&format!("{busi}/saga/credit"), &t).unwrap()
                                .options(quick)
                                .wait_result();
                            let a = saga.submit(&client).await.unwrap();
                            assert!(a.status.is_final(), "{} waited for its result", a.gid);
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }

                // Wait until every transaction the coordinator knows is final.
                let listed = dtx_tests::eventually(Duration::from_secs(60), "every transaction final", || {
                    let url = coord.url.clone();
                    async move {
                        let page: serde_json::Value = reqwest::get(format!("{url}/api/v1/transactions?limit=1000")).await.ok()?.json().await.ok()?;
                        let txs = page["transactions"].as_array()?.clone();
                        txs.iter().all(|t| t["status"] == "succeeded" || t["status"] == "failed").then_some(txs)
                    }
                })
                .await;
                assert_eq!(listed.len(), transfers, "every transfer is a transaction at the coordinator");

                let cast = if $mysql { "SIGNED" } else { "BIGINT" };
                let sum = |col: &str| sql(&format!("SELECT CAST(SUM({col}) AS {cast}) FROM account"));
                let total: i64 = sqlx::query_scalar(sum("balance")).fetch_one(&pool).await.unwrap();
                let frozen: i64 = sqlx::query_scalar(sum("frozen")).fetch_one(&pool).await.unwrap();
                assert_eq!(total, START * ACCOUNTS.len() as i64, "money was created or destroyed");
                assert_eq!(frozen, 0, "a reservation was left behind");

                // No op took effect twice, and each transaction's net effect matches its outcome.
                let rows: Vec<(String, String, String, i64)> =
                    sqlx::query_as("SELECT gid, op, account, delta FROM ledger").fetch_all(&pool).await.unwrap();
                let mut seen = std::collections::HashSet::new();
                for (gid, op, account, _) in &rows {
                    assert!(seen.insert((gid.clone(), op.clone(), account.clone())), "{gid} {op} on {account} took effect twice");
                }
                let (mut ok, mut failed) = (0, 0);
                for t in &listed {
                    let gid = t["gid"].as_str().unwrap();
                    let net = |acct: &str| -> i64 { rows.iter().filter(|r| r.0 == gid && r.2 == acct).map(|r| r.3).sum() };
                    let moved: i64 = ACCOUNTS.iter().map(|a| net(a).abs()).sum();
                    if t["status"] == "succeeded" {
                        ok += 1;
                        assert!(moved > 0 && ACCOUNTS.iter().map(|a| net(a)).sum::<i64>() == 0, "{gid}: succeeded but ledger is {moved}");
                    } else {
                        failed += 1;
                        assert_eq!(moved, 0, "{gid}: failed but left an effect");
                    }
                }
                eprintln!("{transfers} transfers: {ok} succeeded, {failed} rolled back; total conserved");
                assert!(ok > 0 && failed > 0, "the run should exercise both outcomes ({ok} ok, {failed} failed)");
            }
        }
    };
}

money_tests!(
    postgres,
    sqlx::Postgres,
    dtx_tests::backend::fresh_pg_pool,
    false
);
money_tests!(
    mysql,
    sqlx::MySql,
    dtx_tests::backend::fresh_mysql_pool,
    true
);
money_tests!(
    sqlite,
    sqlx::Sqlite,
    dtx_tests::backend::fresh_sqlite_pool,
    false
);
