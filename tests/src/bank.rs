//! A bank on PostgreSQL for fault tests: accounts moved by TCC and saga branches, each op
//! guarded by the barrier and recorded in a ledger, so that a test can prove that money
//! was neither created nor destroyed and that no op took effect twice.

use dtx::barrier;
use dtx::{BranchContext, BranchError, BranchResult, SagaParticipant, TccParticipant};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

/// A transfer between two accounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transfer {
    /// Debited account.
    pub from: String,
    /// Credited account.
    pub to: String,
    /// Amount.
    pub amount: i64,
}

/// The accounts of the bank.
pub const ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "dave"];
/// Each account's opening balance.
pub const OPENING: i64 = 1_000;

async fn ledger(
    c: &mut PgConnection,
    ctx: &BranchContext,
    account: &str,
    delta: i64,
) -> Result<(), BranchError> {
    sqlx::query("INSERT INTO ledger (gid, op, account, delta) VALUES ($1, $2, $3, $4)")
        .bind(&ctx.gid)
        .bind(ctx.op.as_str())
        .bind(account)
        .bind(delta)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Creates the tables and opens the accounts.
pub async fn open(pool: &PgPool) {
    barrier::migrate(pool).await.expect("barrier DDL");
    sqlx::raw_sql(
        "CREATE TABLE account (id TEXT PRIMARY KEY, balance BIGINT NOT NULL, frozen BIGINT NOT NULL DEFAULT 0);
         CREATE TABLE ledger (gid TEXT NOT NULL, op TEXT NOT NULL, account TEXT NOT NULL, delta BIGINT NOT NULL,
                              UNIQUE (gid, op, account));",
    )
    .execute(pool)
    .await
    .expect("bank DDL");
    for a in ACCOUNTS {
        sqlx::query("INSERT INTO account (id, balance) VALUES ($1, $2)")
            .bind(a)
            .bind(OPENING)
            .execute(pool)
            .await
            .expect("open account");
    }
}

/// TCC debit: try freezes, confirm takes, cancel releases.
pub struct Debit(pub PgPool);
/// TCC credit: confirm adds.
pub struct Credit(pub PgPool);
/// Saga step: `debit` takes from `from`, else gives to `to`.
pub struct Move {
    /// The database.
    pub pool: PgPool,
    /// Which side of the transfer.
    pub debit: bool,
}

#[async_trait::async_trait]
impl TccParticipant for Debit {
    type Request = Transfer;
    async fn try_(&self, ctx: &BranchContext, t: Transfer) -> BranchResult {
        barrier::call(&self.0, ctx, async |c: &mut PgConnection| {
            let n = sqlx::query("UPDATE account SET balance = balance - $1, frozen = frozen + $1 WHERE id = $2 AND balance >= $1")
                .bind(t.amount)
                .bind(&t.from)
                .execute(&mut *c)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(BranchError::failure("insufficient funds"));
            }
            ledger(c, ctx, &t.from, -t.amount).await
        })
        .await?;
        Ok(())
    }
    async fn confirm(&self, ctx: &BranchContext, t: Transfer) -> BranchResult {
        barrier::call(&self.0, ctx, async |c: &mut PgConnection| {
            sqlx::query("UPDATE account SET frozen = frozen - $1 WHERE id = $2")
                .bind(t.amount)
                .bind(&t.from)
                .execute(&mut *c)
                .await?;
            Ok::<_, BranchError>(())
        })
        .await?;
        Ok(())
    }
    async fn cancel(&self, ctx: &BranchContext, t: Transfer) -> BranchResult {
        barrier::call(&self.0, ctx, async |c: &mut PgConnection| {
            sqlx::query(
                "UPDATE account SET balance = balance + $1, frozen = frozen - $1 WHERE id = $2",
            )
            .bind(t.amount)
            .bind(&t.from)
            .execute(&mut *c)
            .await?;
            ledger(c, ctx, &t.from, t.amount).await
        })
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl TccParticipant for Credit {
    type Request = Transfer;
    async fn try_(&self, ctx: &BranchContext, _t: Transfer) -> BranchResult {
        barrier::call(&self.0, ctx, async |_c: &mut PgConnection| {
            Ok::<_, BranchError>(())
        })
        .await?;
        Ok(())
    }
    async fn confirm(&self, ctx: &BranchContext, t: Transfer) -> BranchResult {
        barrier::call(&self.0, ctx, async |c: &mut PgConnection| {
            sqlx::query("UPDATE account SET balance = balance + $1 WHERE id = $2")
                .bind(t.amount)
                .bind(&t.to)
                .execute(&mut *c)
                .await?;
            ledger(c, ctx, &t.to, t.amount).await
        })
        .await?;
        Ok(())
    }
    async fn cancel(&self, ctx: &BranchContext, _t: Transfer) -> BranchResult {
        barrier::call(&self.0, ctx, async |_c: &mut PgConnection| {
            Ok::<_, BranchError>(())
        })
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl SagaParticipant for Move {
    type Request = Transfer;
    async fn action(&self, ctx: &BranchContext, t: Transfer) -> BranchResult {
        let (account, delta) = if self.debit {
            (t.from.clone(), -t.amount)
        } else {
            (t.to.clone(), t.amount)
        };
        barrier::call(&self.pool, ctx, async |c: &mut PgConnection| {
            let n = sqlx::query(
                "UPDATE account SET balance = balance + $1 WHERE id = $2 AND balance + $1 >= 0",
            )
            .bind(delta)
            .bind(&account)
            .execute(&mut *c)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(BranchError::failure("insufficient funds"));
            }
            ledger(c, ctx, &account, delta).await
        })
        .await?;
        Ok(())
    }
    async fn compensate(&self, ctx: &BranchContext, t: Transfer) -> BranchResult {
        let (account, delta) = if self.debit {
            (t.from.clone(), t.amount)
        } else {
            (t.to.clone(), -t.amount)
        };
        barrier::call(&self.pool, ctx, async |c: &mut PgConnection| {
            sqlx::query("UPDATE account SET balance = balance + $1 WHERE id = $2")
                .bind(delta)
                .bind(&account)
                .execute(&mut *c)
                .await?;
            ledger(c, ctx, &account, delta).await
        })
        .await?;
        Ok(())
    }
}

/// Serves the bank on a free loopback port: `/tcc/debit`, `/tcc/credit`, `/saga/debit`,
/// `/saga/credit`. Returns its base URL.
pub async fn serve(pool: PgPool) -> String {
    let app = axum::Router::new()
        .nest("/tcc/debit", dtx::axum::tcc_router(Debit(pool.clone())))
        .nest("/tcc/credit", dtx::axum::tcc_router(Credit(pool.clone())))
        .nest(
            "/saga/debit",
            dtx::axum::saga_router(Move {
                pool: pool.clone(),
                debit: true,
            }),
        )
        .nest(
            "/saga/credit",
            dtx::axum::saga_router(Move { pool, debit: false }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind bank");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// What the books say after a run.
#[derive(Debug)]
pub struct Audit {
    /// Sum of balances.
    pub total: i64,
    /// Sum of frozen amounts.
    pub frozen: i64,
    /// Rows in the ledger.
    pub ledger_rows: i64,
}

/// Reads the books. The ledger's unique key (gid, op, account) would have refused any op
/// taking effect twice, so `ledger_rows` counts distinct effects.
pub async fn audit(pool: &PgPool) -> Audit {
    let (total, frozen): (i64, i64) = sqlx::query_as(
        "SELECT CAST(SUM(balance) AS BIGINT), CAST(SUM(frozen) AS BIGINT) FROM account",
    )
    .fetch_one(pool)
    .await
    .expect("audit");
    let ledger_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger")
        .fetch_one(pool)
        .await
        .expect("audit");
    Audit {
        total,
        frozen,
        ledger_rows,
    }
}

/// Runs one transfer as a TCC (even `i`) or a saga (odd `i`) through `client`.
pub async fn transfer(
    client: &dtx::Client,
    busi: &str,
    i: usize,
    t: &Transfer,
    options: dtx::api::TxOptions,
) {
    if i.is_multiple_of(2) {
        // A failed try aborts; the coordinator cancels. Either outcome is fine here.
        let _ = dtx::Tcc::run(client, options, false, async |tcc: &dtx::Tcc| {
            tcc.call_branch(t, &format!("{busi}/tcc/debit")).await?;
            tcc.call_branch(t, &format!("{busi}/tcc/credit")).await?;
            Ok(())
        })
        .await;
    } else {
        let saga = dtx::Saga::new()
            .step(&format!("{busi}/saga/debit"), t)
            .and_then(|s| s.step(&format!("{busi}/saga/credit"), t))
            .map(|s| s.options(options));
        if let Ok(saga) = saga {
            let _ = saga.submit(client).await;
        }
    }
}
