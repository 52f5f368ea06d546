//! Two account services, each with its own PostgreSQL database, move money with TCC.
//!
//! Bank A holds alice, bank B holds bob. A transfer is one TCC transaction with two
//! branches: the debit's try reserves the amount (`frozen`), confirm takes it, cancel
//! releases it; the credit's confirm adds it. Every op runs inside [`dtx::barrier::call`],
//! so duplicates, a cancel before its try and a try after its cancel are harmless.

use std::time::Duration;

use anyhow::Context;
use dtx::barrier;
use dtx::{BranchContext, BranchError, BranchResult, GlobalStatus, TccParticipant};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

/// A transfer leg: `amount` is negative for the debit, positive for the credit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leg {
    /// The account.
    pub account: String,
    /// Signed amount.
    pub amount: i64,
}

/// One bank: accounts in its own database, mounted as a TCC participant.
pub struct Bank {
    pool: PgPool,
}

#[async_trait::async_trait]
impl TccParticipant for Bank {
    type Request = Leg;

    async fn try_(&self, ctx: &BranchContext, leg: Leg) -> BranchResult {
        let reserve = (-leg.amount).max(0);
        barrier::call(&self.pool, ctx, async |tx: &mut PgConnection| {
            let n = sqlx::query(
                "UPDATE account SET frozen = frozen + $1 WHERE id = $2 AND balance - frozen - $1 >= 0",
            )
            .bind(reserve)
            .bind(&leg.account)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(BranchError::failure(format!("{}: unknown account or insufficient funds", leg.account)));
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn confirm(&self, ctx: &BranchContext, leg: Leg) -> BranchResult {
        let reserved = (-leg.amount).max(0);
        barrier::call(&self.pool, ctx, async |tx: &mut PgConnection| {
            sqlx::query(
                "UPDATE account SET balance = balance + $1, frozen = frozen - $2 WHERE id = $3",
            )
            .bind(leg.amount)
            .bind(reserved)
            .bind(&leg.account)
            .execute(&mut *tx)
            .await?;
            Ok::<_, BranchError>(())
        })
        .await?;
        Ok(())
    }

    async fn cancel(&self, ctx: &BranchContext, leg: Leg) -> BranchResult {
        let reserved = (-leg.amount).max(0);
        barrier::call(&self.pool, ctx, async |tx: &mut PgConnection| {
            sqlx::query("UPDATE account SET frozen = frozen - $1 WHERE id = $2")
                .bind(reserved)
                .bind(&leg.account)
                .execute(&mut *tx)
                .await?;
            Ok::<_, BranchError>(())
        })
        .await?;
        Ok(())
    }
}

/// Creates the bank's tables and resets its account to `balance`.
pub async fn open_bank(url: &str, account: &str, balance: i64) -> anyhow::Result<PgPool> {
    let pool = PgPool::connect(url)
        .await
        .with_context(|| format!("connect to {url}"))?;
    barrier::migrate(&pool).await?;
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS account (id TEXT PRIMARY KEY, balance BIGINT NOT NULL, frozen BIGINT NOT NULL DEFAULT 0)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO account (id, balance, frozen) VALUES ($1, $2, 0) ON CONFLICT (id) DO UPDATE SET balance = $2, frozen = 0")
        .bind(account)
        .bind(balance)
        .execute(&pool)
        .await?;
    Ok(pool)
}

/// Serves a bank on a free loopback port; returns its base URL.
pub async fn serve_bank(pool: PgPool) -> anyhow::Result<String> {
    let app = axum::Router::new().nest("/account", dtx::axum::tcc_router(Bank { pool }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/account", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// Moves `amount` from alice (bank A) to bob (bank B) in one TCC transaction.
pub async fn transfer(
    client: &dtx::Client,
    bank_a: &str,
    bank_b: &str,
    amount: i64,
) -> Result<(String, GlobalStatus), dtx::TccError> {
    dtx::Tcc::run(client, Default::default(), true, async |tcc: &dtx::Tcc| {
        tcc.call_branch(
            &Leg {
                account: "alice".into(),
                amount: -amount,
            },
            bank_a,
        )
        .await?;
        tcc.call_branch(
            &Leg {
                account: "bob".into(),
                amount,
            },
            bank_b,
        )
        .await?;
        Ok(())
    })
    .await
}

/// `(balance, frozen)` of an account.
pub async fn account(pool: &PgPool, id: &str) -> anyhow::Result<(i64, i64)> {
    Ok(
        sqlx::query_as("SELECT balance, frozen FROM account WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?,
    )
}

/// Where the example keeps its data and finds (or starts) its coordinator.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Database of bank A.
    pub bank_a_db: String,
    /// Database of bank B.
    pub bank_b_db: String,
    /// A running coordinator; `None` starts one in-process on a temporary SQLite file.
    pub coordinator: Option<String>,
}

/// What happened: the outcome of each transfer and the final rows.
#[derive(Debug)]
pub struct Report {
    /// Transfer of 30: committed.
    pub first: GlobalStatus,
    /// Transfer of 500: refused by bank A's try, so both branches were cancelled.
    pub second: String,
    /// alice's `(balance, frozen)`.
    pub alice: (i64, i64),
    /// bob's `(balance, frozen)`.
    pub bob: (i64, i64),
}

/// Runs the example: alice starts with 100, bob with 0; 30 moves, then 500 is refused.
pub async fn run(settings: Settings) -> anyhow::Result<Report> {
    let (pool_a, pool_b) = (
        open_bank(&settings.bank_a_db, "alice", 100).await?,
        open_bank(&settings.bank_b_db, "bob", 0).await?,
    );
    let (bank_a, bank_b) = (
        serve_bank(pool_a.clone()).await?,
        serve_bank(pool_b.clone()).await?,
    );
    let (_stop, url, _dir) = match settings.coordinator {
        Some(url) => (None, url, None),
        None => {
            let dir =
                std::env::temp_dir().join(format!("tcc-bank-transfer-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let config = dtx_coordinator::config::Config {
                database_url: format!("sqlite://{}", dir.join("dtx.db").display()),
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            };
            let (addr, stop) = dtx_coordinator::server::start_in_background(config).await?;
            (Some(stop), format!("http://{addr}"), Some(TempDir(dir)))
        }
    };
    let client = dtx::Client::with_timeout(&url, Duration::from_secs(60));
    let (_, first) = transfer(&client, &bank_a, &bank_b, 30).await?;
    let second = match transfer(&client, &bank_a, &bank_b, 500).await {
        Ok((gid, status)) => format!("{gid} {status}"),
        Err(e) => format!("aborted: {e}"),
    };
    Ok(Report {
        first,
        second,
        alice: account(&pool_a, "alice").await?,
        bob: account(&pool_b, "bob").await?,
    })
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
