//! DESIGN §5 on PostgreSQL, MariaDB and SQLite: duplicates run once, a cancel before its
//! try is a null compensation and the late try is refused, racing tries and cancels never
//! leave half an effect, errors roll the barrier back, check-backs see committed local
//! transactions only, and retention deletes old rows.

/// The same scenarios for each database; `$fresh` makes a pool on a new database.
macro_rules! barrier_tests {
    ($module:ident, $db:ty, $fresh:path) => {
        mod $module {
            use std::time::Duration;

            use dtx::barrier::{self, Barrier, Prepared, Skip};
            use dtx::{BranchContext, Op, TransType};
            use sqlx::AssertSqlSafe;

            type Pool = sqlx::Pool<$db>;
            type Conn = <$db as sqlx::Database>::Connection;

            async fn setup() -> (Pool, dtx_tests::Database) {
                let (pool, db) = $fresh().await;
                barrier::migrate(&pool).await.expect("barrier DDL");
                barrier::migrate(&pool)
                    .await
                    .expect("the DDL is re-runnable");
                sqlx::raw_sql(
                    "CREATE TABLE effects (gid VARCHAR(128) NOT NULL, op VARCHAR(16) NOT NULL)",
                )
                .execute(&pool)
                .await
                .unwrap();
                (pool, db)
            }

            /// The business work: one row in `effects` per op that took effect.
            async fn effect(conn: &mut Conn, ctx: &BranchContext) -> Result<(), sqlx::Error> {
                let sql = format!(
                    "INSERT INTO effects (gid, op) VALUES ('{}', '{}')",
                    ctx.gid, ctx.op
                );
                sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
                Ok(())
            }

            async fn effects(pool: &Pool, gid: &str) -> Vec<String> {
                let sql = format!("SELECT op FROM effects WHERE gid = '{gid}' ORDER BY op");
                sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await
                    .unwrap()
            }

            async fn run(
                pool: &Pool,
                ctx: &BranchContext,
            ) -> Result<Barrier<()>, barrier::BarrierError<sqlx::Error>> {
                barrier::call(pool, ctx, async |conn: &mut Conn| effect(conn, ctx).await).await
            }

            fn ctx(gid: &str, op: Op) -> BranchContext {
                BranchContext::new(gid, TransType::Tcc, "01", op)
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn duplicates_run_once() {
                let (pool, _db) = setup().await;
                assert_eq!(
                    run(&pool, &ctx("g1", Op::Try)).await.unwrap(),
                    Barrier::Ran(())
                );
                assert_eq!(
                    run(&pool, &ctx("g1", Op::Try)).await.unwrap(),
                    Barrier::Skipped(Skip::Duplicate)
                );
                assert_eq!(
                    run(&pool, &ctx("g1", Op::Confirm)).await.unwrap(),
                    Barrier::Ran(())
                );
                assert_eq!(
                    run(&pool, &ctx("g1", Op::Confirm)).await.unwrap(),
                    Barrier::Skipped(Skip::Duplicate)
                );
                assert_eq!(effects(&pool, "g1").await, ["confirm", "try"]);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancel_before_try_is_null_and_the_late_try_is_refused() {
                let (pool, _db) = setup().await;
                assert_eq!(
                    run(&pool, &ctx("g2", Op::Cancel)).await.unwrap(),
                    Barrier::Skipped(Skip::NullCompensation)
                );
                assert_eq!(
                    run(&pool, &ctx("g2", Op::Try)).await.unwrap(),
                    Barrier::Skipped(Skip::AfterCompensation)
                );
                assert_eq!(
                    run(&pool, &ctx("g2", Op::Cancel)).await.unwrap(),
                    Barrier::Skipped(Skip::Duplicate)
                );
                assert!(effects(&pool, "g2").await.is_empty());
                // A try followed by its cancel: both take effect.
                assert!(run(&pool, &ctx("g3", Op::Try)).await.unwrap().ran());
                assert!(run(&pool, &ctx("g3", Op::Cancel)).await.unwrap().ran());
                assert_eq!(effects(&pool, "g3").await, ["cancel", "try"]);
                // The same for a saga's action and compensation.
                let comp = BranchContext::new("g4", TransType::Saga, "02", Op::Compensate);
                assert_eq!(
                    run(&pool, &comp).await.unwrap(),
                    Barrier::Skipped(Skip::NullCompensation)
                );
                let action = BranchContext::new("g4", TransType::Saga, "02", Op::Action);
                assert_eq!(
                    run(&pool, &action).await.unwrap(),
                    Barrier::Skipped(Skip::AfterCompensation)
                );
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failed_work_rolls_the_barrier_back() {
                let (pool, _db) = setup().await;
                let c = ctx("g5", Op::Try);
                let failed = barrier::call(&pool, &c, async |conn: &mut Conn| {
                    effect(conn, &c).await?;
                    Err::<(), _>(sqlx::Error::Protocol("business says no".into()))
                })
                .await;
                assert!(matches!(failed, Err(barrier::BarrierError::Work(_))));
                assert!(
                    effects(&pool, "g5").await.is_empty(),
                    "the work's writes rolled back"
                );
                assert!(
                    run(&pool, &c).await.unwrap().ran(),
                    "a retry runs the work: no barrier row was left"
                );
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn racing_try_and_cancel_never_leave_half_an_effect() {
                let (pool, _db) = setup().await;
                let rounds = 200;
                let mut tasks = Vec::new();
                for i in 0..rounds {
                    for op in [Op::Try, Op::Cancel] {
                        let pool = pool.clone();
                        tasks.push(tokio::spawn(async move {
                            let c = ctx(&format!("race-{i}"), op);
                            // Like the coordinator, retry what the database refused
                            // (lock waits, deadlocks): the barrier makes retries safe.
                            for _ in 0..50 {
                                match run(&pool, &c).await {
                                    Ok(_) => return,
                                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                                }
                            }
                            panic!("{} {} kept failing", c.gid, c.op);
                        }));
                    }
                }
                for t in tasks {
                    t.await.unwrap();
                }
                let (mut none, mut both) = (0, 0);
                for i in 0..rounds {
                    match effects(&pool, &format!("race-{i}")).await.as_slice() {
                        [] => none += 1,
                        [a, b] if a == "cancel" && b == "try" => both += 1,
                        other => panic!("race-{i} left {other:?}: half an effect"),
                    }
                }
                assert_eq!(none + both, rounds);
                eprintln!(
                    "{} races: {none} cancelled before the try, {both} tried then cancelled",
                    rounds
                );
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn check_back_sees_committed_local_transactions_only() {
                let (pool, _db) = setup().await;
                let msg = BranchContext::new("m1", TransType::Msg, "00", Op::Msg);
                // The initiator's local transaction commits with its barrier row.
                assert!(run(&pool, &msg).await.unwrap().ran());
                assert_eq!(
                    barrier::query_prepared(&pool, "m1").await.unwrap(),
                    Prepared::Committed
                );
                // No local transaction: rolled back, and a late one is refused.
                assert_eq!(
                    barrier::query_prepared(&pool, "m2").await.unwrap(),
                    Prepared::RolledBack
                );
                let late = BranchContext::new("m2", TransType::Msg, "00", Op::Msg);
                assert_eq!(
                    run(&pool, &late).await.unwrap(),
                    Barrier::Skipped(Skip::AfterCompensation)
                );
                assert!(effects(&pool, "m2").await.is_empty());
                // In flight: the check-back waits for the local transaction to end.
                let (started_tx, started_rx) = tokio::sync::oneshot::channel();
                let p2 = pool.clone();
                let local = tokio::spawn(async move {
                    let c = BranchContext::new("m3", TransType::Msg, "00", Op::Msg);
                    barrier::call(&p2, &c, async |conn: &mut Conn| {
                        effect(conn, &c).await?;
                        let _ = started_tx.send(());
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        Ok::<_, sqlx::Error>(())
                    })
                    .await
                    .unwrap()
                });
                started_rx.await.unwrap();
                assert_eq!(
                    barrier::query_prepared(&pool, "m3").await.unwrap(),
                    Prepared::Committed
                );
                assert!(local.await.unwrap().ran());
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retention_deletes_old_rows_only() {
                let (pool, _db) = setup().await;
                run(&pool, &ctx("old", Op::Try)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2_100)).await;
                run(&pool, &ctx("new", Op::Try)).await.unwrap();
                assert_eq!(
                    barrier::delete_older_than(&pool, Duration::from_secs(1))
                        .await
                        .unwrap(),
                    1
                );
                assert_eq!(
                    run(&pool, &ctx("new", Op::Try)).await.unwrap(),
                    Barrier::Skipped(Skip::Duplicate)
                );
                assert_eq!(
                    barrier::delete_older_than(&pool, Duration::from_secs(3600))
                        .await
                        .unwrap(),
                    0
                );
            }
        }
    };
}

barrier_tests!(postgres, sqlx::Postgres, dtx_tests::backend::fresh_pg_pool);
barrier_tests!(mysql, sqlx::MySql, dtx_tests::backend::fresh_mysql_pool);
barrier_tests!(sqlite, sqlx::Sqlite, dtx_tests::backend::fresh_sqlite_pool);
