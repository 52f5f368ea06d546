//! XA across PostgreSQL and MariaDB: transfers commit or roll back atomically, also when
//! the coordinator dies between its decision and phase 2 and when a participant dies after
//! PREPARE. At the end of every test `pg_prepared_xacts` and `XA RECOVER` hold nothing of ours.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use dtx::api::{Finish, PrepareTcc, TxOptions};
use dtx::{BranchContext, BranchError, GlobalStatus};
use dtx_tests::{Backend, CoordinatorProc, Database, query_until};
use serde::Deserialize;
use sqlx::{MySqlPool, PgPool};

#[derive(Clone)]
enum Pool {
    Pg(PgPool),
    My(MySqlPool),
}

impl Pool {
    async fn setup(&self, account: &str, balance: i64) {
        let ddl = "CREATE TABLE account (id VARCHAR(32) PRIMARY KEY, balance BIGINT NOT NULL)";
        match self {
            Pool::Pg(p) => {
                dtx::barrier::migrate(p).await.unwrap();
                sqlx::raw_sql(ddl).execute(p).await.unwrap();
                sqlx::query("INSERT INTO account VALUES ($1, $2)")
                    .bind(account)
                    .bind(balance)
                    .execute(p)
                    .await
                    .unwrap();
            }
            Pool::My(p) => {
                dtx::barrier::migrate(p).await.unwrap();
                sqlx::raw_sql(ddl).execute(p).await.unwrap();
                sqlx::query("INSERT INTO account VALUES (?, ?)")
                    .bind(account)
                    .bind(balance)
                    .execute(p)
                    .await
                    .unwrap();
            }
        }
    }

    async fn balance(&self, account: &str) -> i64 {
        match self {
            Pool::Pg(p) => sqlx::query_scalar("SELECT balance FROM account WHERE id = $1")
                .bind(account)
                .fetch_one(p)
                .await
                .unwrap(),
            Pool::My(p) => sqlx::query_scalar("SELECT balance FROM account WHERE id = ?")
                .bind(account)
                .fetch_one(p)
                .await
                .unwrap(),
        }
    }

    /// Prepared transactions of these global transactions. (`XA RECOVER` lists the whole
    /// server, where other tests run too: only our gids count.)
    async fn prepared(&self, gids: &[&str]) -> Vec<String> {
        let all = match self {
            Pool::Pg(p) => dtx::xa::postgres::prepared(p).await.unwrap(),
            Pool::My(p) => dtx::xa::mysql::prepared(p).await.unwrap(),
        };
        all.into_iter()
            .filter(|x| dtx::xa::parse_xid(x).is_some_and(|(g, _)| gids.contains(&g)))
            .collect()
    }
}

struct Bank {
    pool: Pool,
    coordinator: String,
    base: String,
    /// Phase-2 calls hang (as if the participant were slow) while set.
    slow_phase2: std::sync::atomic::AtomicBool,
}

#[derive(Deserialize)]
struct Move {
    account: String,
    amount: i64,
}

/// Phase 1: move `amount` (negative: debit, refused below zero) in a prepared branch.
async fn action(
    State(bank): State<Arc<Bank>>,
    ctx: BranchContext,
    axum::Json(m): axum::Json<Move>,
) -> Result<(), BranchError> {
    let client = dtx::Client::new(&bank.coordinator);
    let url = format!("{}/phase2", bank.base);
    match &bank.pool {
        Pool::Pg(p) => {
            dtx::xa::postgres::prepare(
                p,
                &client,
                &ctx,
                &url,
                async |c: &mut sqlx::PgConnection| {
                    let n = sqlx::query(
                    "UPDATE account SET balance = balance + $1 WHERE id = $2 AND balance + $1 >= 0",
                )
                .bind(m.amount)
                .bind(&m.account)
                .execute(&mut *c)
                .await
                .map_err(|e| e.to_string())?
                .rows_affected();
                    if n == 0 {
                        Err("insufficient funds".to_string())
                    } else {
                        Ok(())
                    }
                },
            )
            .await?
        }
        Pool::My(p) => {
            dtx::xa::mysql::prepare(
                p,
                &client,
                &ctx,
                &url,
                async |c: &mut sqlx::MySqlConnection| {
                    let n = sqlx::query(
                    "UPDATE account SET balance = balance + ? WHERE id = ? AND balance + ? >= 0",
                )
                .bind(m.amount)
                .bind(&m.account)
                .bind(m.amount)
                .execute(&mut *c)
                .await
                .map_err(|e| e.to_string())?
                .rows_affected();
                    if n == 0 {
                        Err("insufficient funds".to_string())
                    } else {
                        Ok(())
                    }
                },
            )
            .await?
        }
    }
    Ok(())
}

async fn phase2(State(bank): State<Arc<Bank>>, ctx: BranchContext) -> Result<(), BranchError> {
    if bank.slow_phase2.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    match &bank.pool {
        Pool::Pg(p) => dtx::xa::postgres::phase2(p, &ctx).await,
        Pool::My(p) => dtx::xa::mysql::phase2(p, &ctx).await,
    }
}

/// Serves a bank on `listener`; the task ends (the "process dies") when aborted.
fn serve(bank: Arc<Bank>, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new()
        .route("/action", post(action))
        .route("/phase2", post(phase2).get(phase2))
        .with_state(bank);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

async fn bank(
    pool: Pool,
    coordinator: &str,
    account: &str,
    balance: i64,
) -> (Arc<Bank>, tokio::task::JoinHandle<()>) {
    pool.setup(account, balance).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let bank = Arc::new(Bank {
        pool,
        coordinator: coordinator.to_owned(),
        base,
        slow_phase2: false.into(),
    });
    let task = serve(Arc::clone(&bank), listener);
    (bank, task)
}

async fn pg() -> (Pool, Database) {
    let (p, db) = dtx_tests::backend::fresh_pg_pool().await;
    (Pool::Pg(p), db)
}

async fn my() -> (Pool, Database) {
    let (p, db) = dtx_tests::backend::fresh_mysql_pool().await;
    (Pool::My(p), db)
}

fn quick() -> TxOptions {
    TxOptions {
        retry_interval_ms: Some(50),
        retry_cap_ms: Some(300),
        request_timeout_ms: Some(1_000),
        ..Default::default()
    }
}

/// The initiator's phase 1: prepare, then call each branch's action (it prepares its local
/// transaction and registers itself). Returns the gid and whether every branch prepared.
async fn phase_one(coord: &CoordinatorProc, legs: &[(&Bank, &str, i64)]) -> (String, bool) {
    let options = PrepareTcc {
        gid: None,
        options: quick(),
    };
    let gid = coord.client().prepare_xa(&options).await.unwrap().gid;
    let http = reqwest::Client::new();
    for (i, (bank, account, amount)) in legs.iter().enumerate() {
        let res = http
            .post(format!("{}/action", bank.base))
            .query(&[
                ("gid", gid.as_str()),
                ("trans_type", "xa"),
                ("branch_id", &format!("{:02}", i + 1)),
                ("op", "action"),
            ])
            .json(&serde_json::json!({"account": account, "amount": amount}))
            .send()
            .await
            .unwrap();
        if !res.status().is_success() {
            return (gid, false);
        }
    }
    (gid, true)
}

/// The whole initiator: phase 1, then submit (or abort when a branch refused), waiting.
async fn transfer(coord: &CoordinatorProc, legs: &[(&Bank, &str, i64)]) -> (String, GlobalStatus) {
    let (gid, prepared) = phase_one(coord, legs).await;
    let client = coord.client();
    let wait = Finish {
        wait_result: true,
        reason: None,
    };
    let status = if prepared {
        client.submit(&gid, &wait).await.unwrap().status
    } else {
        client.abort(&gid, &wait).await.unwrap().status
    };
    (gid, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_between_two_postgres_databases() {
    let cdb = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(&cdb.url, &[]).await;
    let ((pa, _da), (pb, _db)) = (pg().await, pg().await);
    let (a, _ta) = bank(pa.clone(), &coord.url, "alice", 100).await;
    let (b, _tb) = bank(pb.clone(), &coord.url, "bob", 0).await;
    let (g1, s) = transfer(&coord, &[(&b, "bob", 30), (&a, "alice", -30)]).await;
    assert_eq!(s, GlobalStatus::Succeeded);
    let (g2, s) = transfer(&coord, &[(&b, "bob", 500), (&a, "alice", -500)]).await;
    let gids = [g1.as_str(), g2.as_str()];
    assert_eq!(
        s,
        GlobalStatus::Failed,
        "alice cannot pay 500: bob's prepared credit is rolled back"
    );
    assert_eq!(
        (pa.balance("alice").await, pb.balance("bob").await),
        (70, 30)
    );
    assert!(pa.prepared(&gids).await.is_empty() && pb.prepared(&gids).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_between_postgres_and_mariadb() {
    let cdb = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(&cdb.url, &[]).await;
    let ((pa, _da), (pb, _db)) = (pg().await, my().await);
    let (a, _ta) = bank(pa.clone(), &coord.url, "alice", 100).await;
    let (b, _tb) = bank(pb.clone(), &coord.url, "bob", 0).await;
    let (g1, s) = transfer(&coord, &[(&b, "bob", 30), (&a, "alice", -30)]).await;
    assert_eq!(s, GlobalStatus::Succeeded);
    let (g2, s) = transfer(&coord, &[(&b, "bob", 500), (&a, "alice", -500)]).await;
    let gids = [g1.as_str(), g2.as_str()];
    assert_eq!(s, GlobalStatus::Failed);
    assert_eq!(
        (pa.balance("alice").await, pb.balance("bob").await),
        (70, 30)
    );
    assert!(
        pa.prepared(&gids).await.is_empty(),
        "{:?}",
        pa.prepared(&gids).await
    );
    assert!(
        pb.prepared(&gids).await.is_empty(),
        "XA RECOVER: {:?}",
        pb.prepared(&gids).await
    );
}

/// A transfer of 30 from alice (PostgreSQL) to bob (MariaDB) under a coordinator of its
/// own, with both branches prepared.
struct PreparedTransfer {
    coord: CoordinatorProc,
    pa: Pool,
    pb: Pool,
    a: Arc<Bank>,
    b: Arc<Bank>,
    /// The banks' servers (abort one to let the bank "die").
    ta: tokio::task::JoinHandle<()>,
    tb: tokio::task::JoinHandle<()>,
    gid: String,
    /// The databases, dropped (deleted) with the fixture: keep them bound.
    _dbs: [Database; 3],
}

async fn prepared_transfer() -> PreparedTransfer {
    let cdb = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(&cdb.url, &[]).await;
    let ((pa, da), (pb, db)) = (pg().await, my().await);
    let (a, ta) = bank(pa.clone(), &coord.url, "alice", 100).await;
    let (b, tb) = bank(pb.clone(), &coord.url, "bob", 0).await;
    let (gid, prepared) = phase_one(&coord, &[(&b, "bob", 30), (&a, "alice", -30)]).await;
    assert!(prepared, "both branches prepared");
    PreparedTransfer {
        coord,
        pa,
        pb,
        a,
        b,
        ta,
        tb,
        gid,
        _dbs: [cdb, da, db],
    }
}

/// Serves `bank` again on its old address, as after a restart.
async fn restart(bank: &Arc<Bank>) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(bank.base.trim_start_matches("http://"))
        .await
        .unwrap();
    serve(Arc::clone(bank), listener)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_dead_after_prepare_finishes_after_restart() {
    let PreparedTransfer {
        coord,
        pa,
        pb,
        a,
        ta,
        tb: _tb,
        gid,
        _dbs,
        ..
    } = prepared_transfer().await;
    let client = coord.client();
    // Bank A dies with its branch prepared; the initiator commits; phase 2 cannot reach A.
    ta.abort();
    let _ = ta.await;
    assert_eq!(pa.prepared(&[gid.as_str()]).await.len(), 1);
    client.submit(&gid, &Finish::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.query(&gid).await.unwrap().status,
        GlobalStatus::Submitted,
        "A is down: not final yet"
    );
    // A restarts: it resolves what it left prepared, then serves again on its address
    // (in this order, phase 2 cannot settle it first: that race has its own test below).
    let Pool::Pg(pool) = &pa else { unreachable!() };
    let resolved = dtx::xa::postgres::recover(pool, &client).await.unwrap();
    assert_eq!(
        resolved,
        vec![dtx::xa::Resolution::Committed(dtx::xa::xid(&gid, "02"))]
    );
    let _ta = restart(&a).await;
    let done = query_until(&client, &gid, "the transfer to finish", |t| {
        t.status.is_final()
    })
    .await;
    assert_eq!(done.status, GlobalStatus::Succeeded);
    assert_eq!(
        (pa.balance("alice").await, pb.balance("bob").await),
        (70, 30)
    );
    assert!(
        pa.prepared(&[gid.as_str()]).await.is_empty()
            && pb.prepared(&[gid.as_str()]).await.is_empty()
    );
}

/// Two instances of each participant restart at once and both run their recovery: each
/// sees the same prepared transaction, one settles it, the other finds it gone. Neither
/// may fail, and both report how it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_recoveries_at_once_both_succeed() {
    let PreparedTransfer {
        coord,
        pa,
        pb,
        a,
        b,
        ta,
        tb,
        gid,
        _dbs,
        ..
    } = prepared_transfer().await;
    let client = coord.client();
    for t in [ta, tb] {
        t.abort();
        let _ = t.await;
    }
    client.submit(&gid, &Finish::default()).await.unwrap();
    let (Pool::Pg(pg), Pool::My(my)) = (&pa, &pb) else {
        unreachable!()
    };
    let (pg1, pg2, my1, my2) = tokio::join!(
        dtx::xa::postgres::recover(pg, &client),
        dtx::xa::postgres::recover(pg, &client),
        dtx::xa::mysql::recover(my, &client),
        dtx::xa::mysql::recover(my, &client),
    );
    // A recovery that listed the transaction reports it committed; one that came after the
    // other had finished lists nothing. At least one of the two saw it.
    for (branch, both) in [
        ("02", [pg1.unwrap(), pg2.unwrap()]),
        ("01", [my1.unwrap(), my2.unwrap()]),
    ] {
        let committed = vec![dtx::xa::Resolution::Committed(dtx::xa::xid(&gid, branch))];
        assert!(
            both.iter().all(|r| r.is_empty() || *r == committed) && both.contains(&committed),
            "{both:?}"
        );
    }
    assert_eq!(
        (pa.balance("alice").await, pb.balance("bob").await),
        (70, 30)
    );
    // The banks come back; phase 2 finds nothing left prepared and the transfer succeeds.
    let _serving = (restart(&a).await, restart(&b).await);
    let done = query_until(&client, &gid, "the transfer to finish", |t| {
        t.status.is_final()
    })
    .await;
    assert_eq!(done.status, GlobalStatus::Succeeded);
    assert_eq!(
        (pa.balance("alice").await, pb.balance("bob").await),
        (70, 30)
    );
}

/// MariaDB's `XA RECOVER` lists the whole server's prepared transactions. A service's
/// recovery must leave another database's alone, even one whose coordinator it does not
/// know (asked, its own coordinator would answer 404, which means "roll back").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_leaves_other_databases_alone() {
    use sqlx::Connection;
    let cdb = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(&cdb.url, &[]).await;
    let ((mine, _d1), (theirs, _d2)) = (my().await, my().await);
    let (Pool::My(mine), Pool::My(theirs)) = (&mine, &theirs) else {
        unreachable!()
    };
    // The other service prepared a branch of a transaction our coordinator never saw.
    let db = theirs.connect_options().get_database().unwrap().to_owned();
    let foreign = dtx::xa::xid("elsewhere-1", "01");
    let mut conn = sqlx::MySqlConnection::connect_with(&theirs.connect_options())
        .await
        .unwrap();
    let id = format!("'{foreign}', '{db}'");
    for step in ["START", "END", "PREPARE"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("XA {step} {id}")))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();

    let resolved = dtx::xa::mysql::recover(mine, &coord.client())
        .await
        .unwrap();
    assert!(
        !resolved
            .iter()
            .any(|r| format!("{r:?}").contains("elsewhere-1")),
        "{resolved:?}"
    );
    assert_eq!(
        dtx::xa::mysql::prepared(theirs).await.unwrap(),
        vec![foreign.clone()]
    );
    // MariaDB answers this rollback with XA_RBROLLBACK; what counts is that it is gone.
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("XA ROLLBACK {id}")))
        .execute(theirs)
        .await;
    assert!(dtx::xa::mysql::prepared(theirs).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_dead_between_decision_and_phase_two_finishes_after_restart() {
    let cdb = Backend::Postgres.fresh().await;
    let mut coord = CoordinatorProc::start(&cdb.url, &[("DTX_LEASE_MS", "1000")]).await;
    let ((pa, _da), (pb, _db)) = (pg().await, pg().await);
    let (a, _ta) = bank(pa.clone(), &coord.url, "alice", 100).await;
    let (b, _tb) = bank(pb.clone(), &coord.url, "bob", 0).await;
    let client = coord.client();
    let (gid, prepared) = phase_one(&coord, &[(&b, "bob", 30), (&a, "alice", -30)]).await;
    assert!(prepared, "both branches prepared");
    // The decision is written by submit; phase 2 hangs at the participants; the
    // coordinator dies there.
    a.slow_phase2
        .store(true, std::sync::atomic::Ordering::SeqCst);
    b.slow_phase2
        .store(true, std::sync::atomic::Ordering::SeqCst);
    client.submit(&gid, &Finish::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    coord.kill();
    assert_eq!(
        (
            pa.prepared(&[gid.as_str()]).await.len(),
            pb.prepared(&[gid.as_str()]).await.len()
        ),
        (1, 1),
        "phase 2 had not happened"
    );
    a.slow_phase2
        .store(false, std::sync::atomic::Ordering::SeqCst);
    b.slow_phase2
        .store(false, std::sync::atomic::Ordering::SeqCst);
    coord.restart().await;
    let client = coord.client();
    let done = query_until(&client, &gid, "phase 2 to finish after the restart", |t| {
        t.status.is_final()
    })
    .await;
    assert_eq!(done.status, GlobalStatus::Succeeded);
    assert_eq!(
        (pa.balance("alice").await, pb.balance("bob").await),
        (70, 30)
    );
    assert!(
        pa.prepared(&[gid.as_str()]).await.is_empty()
            && pb.prepared(&[gid.as_str()]).await.is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_before_the_prepare_refuses_the_late_prepare() {
    let cdb = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(&cdb.url, &[]).await;
    let client = coord.client();
    for (pool, _db) in [pg().await, my().await] {
        pool.setup("carol", 10).await;
        let gid = client
            .prepare_xa(&PrepareTcc {
                gid: None,
                options: quick(),
            })
            .await
            .unwrap()
            .gid;
        let rollback = BranchContext::new(&gid, dtx::TransType::Xa, "01", dtx::Op::Rollback);
        let action = BranchContext {
            op: dtx::Op::Action,
            ..rollback.clone()
        };
        let url = "http://127.0.0.1:9/phase2";
        match &pool {
            Pool::Pg(p) => {
                dtx::xa::postgres::phase2(p, &rollback).await.unwrap();
                let late = dtx::xa::postgres::prepare(
                    p,
                    &client,
                    &action,
                    url,
                    async |c: &mut sqlx::PgConnection| {
                        sqlx::query("UPDATE account SET balance = 0")
                            .execute(&mut *c)
                            .await
                    },
                )
                .await;
                assert!(
                    matches!(late, Err(dtx::xa::XaError::RolledBack)),
                    "{late:?}"
                );
            }
            Pool::My(p) => {
                dtx::xa::mysql::phase2(p, &rollback).await.unwrap();
                let late = dtx::xa::mysql::prepare(
                    p,
                    &client,
                    &action,
                    url,
                    async |c: &mut sqlx::MySqlConnection| {
                        sqlx::query("UPDATE account SET balance = 0")
                            .execute(&mut *c)
                            .await
                    },
                )
                .await;
                assert!(
                    matches!(late, Err(dtx::xa::XaError::RolledBack)),
                    "{late:?}"
                );
            }
        }
        assert_eq!(
            pool.balance("carol").await,
            10,
            "the late branch did nothing"
        );
        assert!(
            pool.prepared(&[gid.as_str()]).await.is_empty(),
            "and left nothing prepared"
        );
    }
}
