//! Two account services move money with XA: bank A keeps alice on PostgreSQL (`PREPARE
//! TRANSACTION`), bank B keeps bob on MySQL/MariaDB (`XA PREPARE`). Each service's
//! `/action` runs the transfer leg in a local transaction, prepares it and registers its
//! branch; `/phase2` commits or rolls it back when the coordinator decides.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::routing::post;
use dtx::api::{Finish, PrepareTcc};
use dtx::{BranchContext, BranchError, GlobalStatus};
use serde::{Deserialize, Serialize};
use sqlx::{MySqlPool, PgPool};

/// A transfer leg: negative amounts debit (refused below zero), positive credit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leg {
    /// The account.
    pub account: String,
    /// Signed amount.
    pub amount: i64,
}

/// A bank's database.
#[derive(Clone)]
pub enum Db {
    /// PostgreSQL.
    Pg(PgPool),
    /// MySQL / MariaDB.
    My(MySqlPool),
}

struct Bank {
    db: Db,
    coordinator: String,
    phase2_url: String,
}

async fn action(
    State(bank): State<Arc<Bank>>,
    ctx: BranchContext,
    axum::Json(leg): axum::Json<Leg>,
) -> Result<(), BranchError> {
    let client = dtx::Client::new(&bank.coordinator);
    let refuse = |n: u64| {
        if n == 0 {
            Err(format!("{}: insufficient funds", leg.account))
        } else {
            Ok(())
        }
    };
    match &bank.db {
        Db::Pg(p) => {
            dtx::xa::postgres::prepare(
                p,
                &client,
                &ctx,
                &bank.phase2_url,
                async |c: &mut sqlx::PgConnection| {
                    let r = sqlx::query(
                    "UPDATE account SET balance = balance + $1 WHERE id = $2 AND balance + $1 >= 0",
                )
                .bind(leg.amount)
                .bind(&leg.account)
                .execute(&mut *c)
                .await
                .map_err(|e| e.to_string())?;
                    refuse(r.rows_affected())
                },
            )
            .await?
        }
        Db::My(p) => {
            dtx::xa::mysql::prepare(
                p,
                &client,
                &ctx,
                &bank.phase2_url,
                async |c: &mut sqlx::MySqlConnection| {
                    let r = sqlx::query(
                    "UPDATE account SET balance = balance + ? WHERE id = ? AND balance + ? >= 0",
                )
                .bind(leg.amount)
                .bind(&leg.account)
                .bind(leg.amount)
                .execute(&mut *c)
                .await
                .map_err(|e| e.to_string())?;
                    refuse(r.rows_affected())
                },
            )
            .await?
        }
    }
    Ok(())
}

/// Creates the bank's tables, resets `account` to `balance`, resolves what an earlier run
/// left prepared, and serves the bank on a free port; returns its base URL.
pub async fn start_bank(
    db: Db,
    coordinator: &str,
    account: &str,
    balance: i64,
) -> anyhow::Result<String> {
    let ddl =
        "CREATE TABLE IF NOT EXISTS account (id VARCHAR(32) PRIMARY KEY, balance BIGINT NOT NULL)";
    let client = dtx::Client::new(coordinator);
    match &db {
        Db::Pg(p) => {
            dtx::barrier::migrate(p).await?;
            let _ = dtx::xa::postgres::recover(p, &client).await;
            sqlx::raw_sql(ddl).execute(p).await?;
            sqlx::query(
                "INSERT INTO account VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET balance = $2",
            )
            .bind(account)
            .bind(balance)
            .execute(p)
            .await?;
        }
        Db::My(p) => {
            dtx::barrier::migrate(p).await?;
            let _ = dtx::xa::mysql::recover(p, &client).await;
            sqlx::raw_sql(ddl).execute(p).await?;
            sqlx::query("REPLACE INTO account VALUES (?, ?)")
                .bind(account)
                .bind(balance)
                .execute(p)
                .await?;
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    // Phase 2 is one line: the SDK's router commits or rolls back the prepared branch.
    let phase2: axum::Router = match &db {
        Db::Pg(p) => dtx::axum::xa_postgres_router(p.clone()),
        Db::My(p) => dtx::axum::xa_mysql_router(p.clone()),
    };
    let bank = Arc::new(Bank {
        db,
        coordinator: coordinator.to_owned(),
        phase2_url: format!("{base}/phase2"),
    });
    let app = axum::Router::new()
        .route("/action", post(action))
        .with_state(bank)
        .merge(phase2);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

/// One XA transfer: credit bob (bank B) then debit alice (bank A); submit when both
/// prepared, abort otherwise. Returns the final status.
pub async fn transfer(
    client: &dtx::Client,
    bank_a: &str,
    bank_b: &str,
    amount: i64,
) -> anyhow::Result<GlobalStatus> {
    let gid = client.prepare_xa(&PrepareTcc::default()).await?.gid;
    let http = reqwest::Client::new();
    let mut prepared = true;
    for (i, (base, leg)) in [
        (
            bank_b,
            Leg {
                account: "bob".into(),
                amount,
            },
        ),
        (
            bank_a,
            Leg {
                account: "alice".into(),
                amount: -amount,
            },
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let res = http
            .post(format!("{base}/action"))
            .query(&[
                ("gid", gid.as_str()),
                ("trans_type", "xa"),
                ("branch_id", &format!("{:02}", i + 1)),
                ("op", "action"),
            ])
            .json(&leg)
            .send()
            .await?;
        if !res.status().is_success() {
            prepared = false;
            break;
        }
    }
    let wait = Finish {
        wait_result: true,
        reason: None,
    };
    let done = if prepared {
        client.submit(&gid, &wait).await?
    } else {
        client.abort(&gid, &wait).await?
    };
    Ok(done.status)
}

/// What the example did.
#[derive(Debug)]
pub struct Report {
    /// 30 from alice to bob: committed on both databases.
    pub first: GlobalStatus,
    /// 500: alice's leg refuses, bob's prepared credit is rolled back.
    pub second: GlobalStatus,
    /// alice's balance (bank A).
    pub alice: i64,
    /// bob's balance (bank B).
    pub bob: i64,
    /// Transactions still prepared in either database afterwards (none).
    pub left_prepared: usize,
}

/// Runs the example: alice 100 on PostgreSQL, bob 0 on MariaDB; 30 moves, 500 is refused.
pub async fn run(
    pg_url: &str,
    mysql_url: &str,
    coordinator: Option<String>,
) -> anyhow::Result<Report> {
    let (_stop, url, dir) = match coordinator {
        Some(url) => (None, url, None),
        None => {
            let dir = std::env::temp_dir().join(format!("xa-transfer-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let config = dtx_coordinator::config::Config {
                database_url: format!("sqlite://{}", dir.join("dtx.db").display()),
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            };
            let (addr, stop) = dtx_coordinator::server::start_in_background(config).await?;
            (Some(stop), format!("http://{addr}"), Some(dir))
        }
    };
    let pg = PgPool::connect(pg_url)
        .await
        .with_context(|| format!("connect to {pg_url}"))?;
    let my = MySqlPool::connect(mysql_url)
        .await
        .with_context(|| format!("connect to {mysql_url}"))?;
    let bank_a = start_bank(Db::Pg(pg.clone()), &url, "alice", 100).await?;
    let bank_b = start_bank(Db::My(my.clone()), &url, "bob", 0).await?;
    let client = dtx::Client::with_timeout(&url, Duration::from_secs(60));
    let first = transfer(&client, &bank_a, &bank_b, 30).await?;
    let second = transfer(&client, &bank_a, &bank_b, 500).await?;
    let report = Report {
        first,
        second,
        alice: sqlx::query_scalar("SELECT balance FROM account WHERE id = 'alice'")
            .fetch_one(&pg)
            .await?,
        bob: sqlx::query_scalar("SELECT balance FROM account WHERE id = 'bob'")
            .fetch_one(&my)
            .await?,
        left_prepared: dtx::xa::postgres::prepared(&pg).await?.len()
            + dtx::xa::mysql::prepared(&my).await?.len(),
    };
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(report)
}
