//! An order saga across three services, each with its own SQLite database: order,
//! inventory and payment. A refused payment rolls the saga back: inventory and order are
//! compensated (the order ends `cancelled`, the stock is restored).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use dtx::barrier;
use dtx::{BranchContext, BranchError, BranchResult, GlobalStatus, SagaParticipant};
use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};

/// The saga's payload, sent to every step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    /// Order id.
    pub id: String,
    /// Buyer (whose wallet pays).
    pub user: String,
    /// Product.
    pub sku: String,
    /// Quantity.
    pub qty: i64,
    /// Price to pay.
    pub amount: i64,
}

/// Creates the order (action) or cancels it (compensation).
pub struct Orders(pub SqlitePool);
/// Reserves stock, or puts it back.
pub struct Inventory(pub SqlitePool);
/// Charges the wallet, or refunds it; refuses (409) when the balance is short.
pub struct Payment(pub SqlitePool);

#[async_trait::async_trait]
impl SagaParticipant for Orders {
    type Request = Order;
    async fn action(&self, ctx: &BranchContext, o: Order) -> BranchResult {
        barrier::call(&self.0, ctx, async |tx: &mut SqliteConnection| {
            sqlx::query(
                "INSERT INTO orders (id, sku, qty, amount, status) VALUES (?, ?, ?, ?, 'created')",
            )
            .bind(&o.id)
            .bind(&o.sku)
            .bind(o.qty)
            .bind(o.amount)
            .execute(&mut *tx)
            .await?;
            Ok::<_, BranchError>(())
        })
        .await?;
        Ok(())
    }
    async fn compensate(&self, ctx: &BranchContext, o: Order) -> BranchResult {
        barrier::call(&self.0, ctx, async |tx: &mut SqliteConnection| {
            sqlx::query("UPDATE orders SET status = 'cancelled' WHERE id = ?")
                .bind(&o.id)
                .execute(&mut *tx)
                .await?;
            Ok::<_, BranchError>(())
        })
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl SagaParticipant for Inventory {
    type Request = Order;
    async fn action(&self, ctx: &BranchContext, o: Order) -> BranchResult {
        barrier::call(&self.0, ctx, async |tx: &mut SqliteConnection| {
            let n = sqlx::query("UPDATE stock SET qty = qty - ? WHERE sku = ? AND qty >= ?")
                .bind(o.qty)
                .bind(&o.sku)
                .bind(o.qty)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(BranchError::failure(format!(
                    "not enough {} in stock",
                    o.sku
                )));
            }
            Ok(())
        })
        .await?;
        Ok(())
    }
    async fn compensate(&self, ctx: &BranchContext, o: Order) -> BranchResult {
        barrier::call(&self.0, ctx, async |tx: &mut SqliteConnection| {
            sqlx::query("UPDATE stock SET qty = qty + ? WHERE sku = ?")
                .bind(o.qty)
                .bind(&o.sku)
                .execute(&mut *tx)
                .await?;
            Ok::<_, BranchError>(())
        })
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl SagaParticipant for Payment {
    type Request = Order;
    async fn action(&self, ctx: &BranchContext, o: Order) -> BranchResult {
        barrier::call(&self.0, ctx, async |tx: &mut SqliteConnection| {
            let n = sqlx::query(
                "UPDATE wallet SET balance = balance - ? WHERE user = ? AND balance >= ?",
            )
            .bind(o.amount)
            .bind(&o.user)
            .bind(o.amount)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(BranchError::failure(format!(
                    "{} cannot pay {}",
                    o.user, o.amount
                )));
            }
            Ok(())
        })
        .await?;
        Ok(())
    }
    async fn compensate(&self, ctx: &BranchContext, o: Order) -> BranchResult {
        barrier::call(&self.0, ctx, async |tx: &mut SqliteConnection| {
            sqlx::query("UPDATE wallet SET balance = balance + ? WHERE user = ?")
                .bind(o.amount)
                .bind(&o.user)
                .execute(&mut *tx)
                .await?;
            Ok::<_, BranchError>(())
        })
        .await?;
        Ok(())
    }
}

async fn open(dir: &Path, name: &str, ddl: &str) -> anyhow::Result<SqlitePool> {
    let path = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&path);
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePool::connect_with(options).await?;
    barrier::migrate(&pool).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.to_owned()))
        .execute(&pool)
        .await?;
    Ok(pool)
}

/// The three services' databases.
pub struct Services {
    /// Order service.
    pub orders: SqlitePool,
    /// Inventory service.
    pub inventory: SqlitePool,
    /// Payment service.
    pub payment: SqlitePool,
    /// Base URL of the (single) HTTP server that hosts all three, one path each.
    pub url: String,
}

/// Creates fresh databases in `dir` (stock: 10 of `A1`; wallet: `ann` with 100) and serves
/// the three services on a free loopback port.
pub async fn start_services(dir: &Path) -> anyhow::Result<Services> {
    std::fs::create_dir_all(dir)?;
    let orders = open(dir, "orders", "CREATE TABLE orders (id TEXT PRIMARY KEY, sku TEXT NOT NULL, qty INTEGER NOT NULL, amount INTEGER NOT NULL, status TEXT NOT NULL)").await?;
    let inventory = open(dir, "inventory", "CREATE TABLE stock (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL); INSERT INTO stock VALUES ('A1', 10)").await?;
    let payment = open(dir, "payment", "CREATE TABLE wallet (user TEXT PRIMARY KEY, balance INTEGER NOT NULL); INSERT INTO wallet VALUES ('ann', 100)").await?;
    let app = axum::Router::new()
        .nest("/order", dtx::axum::saga_router(Orders(orders.clone())))
        .nest(
            "/inventory",
            dtx::axum::saga_router(Inventory(inventory.clone())),
        )
        .nest("/payment", dtx::axum::saga_router(Payment(payment.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Services {
        orders,
        inventory,
        payment,
        url,
    })
}

/// Places an order: one saga over the three services, waiting for its outcome.
pub async fn place_order(
    client: &dtx::Client,
    services: &Services,
    order: &Order,
) -> anyhow::Result<GlobalStatus> {
    let accepted = dtx::Saga::new()
        .gid(format!("order-{}", order.id))
        .step(&format!("{}/order", services.url), order)?
        .step(&format!("{}/inventory", services.url), order)?
        .step(&format!("{}/payment", services.url), order)?
        .retry_interval(Duration::from_millis(200))
        .wait_result()
        .submit(client)
        .await?;
    Ok(accepted.status)
}

/// What the example did.
#[derive(Debug)]
pub struct Report {
    /// Order 1 (2 × A1 for 40): succeeded.
    pub first: GlobalStatus,
    /// Order 2 (1 × A1 for 500, more than ann has): failed, compensated.
    pub second: GlobalStatus,
    /// `(id, status)` of every order.
    pub orders: Vec<(String, String)>,
    /// Stock of A1.
    pub stock: i64,
    /// ann's wallet.
    pub wallet: i64,
}

/// Runs the example with data in `dir`, against `coordinator` or an in-process one.
pub async fn run(dir: &Path, coordinator: Option<String>) -> anyhow::Result<Report> {
    let services = start_services(dir).await?;
    let (_stop, url) = match coordinator {
        Some(url) => (None, url),
        None => {
            let _ = std::fs::remove_file(dir.join("dtx.db"));
            let config = dtx_coordinator::config::Config {
                database_url: format!("sqlite://{}", dir.join("dtx.db").display()),
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            };
            let (addr, stop) = dtx_coordinator::server::start_in_background(config).await?;
            (Some(stop), format!("http://{addr}"))
        }
    };
    let client = dtx::Client::with_timeout(&url, Duration::from_secs(60));
    let run_id = std::process::id();
    let first = place_order(
        &client,
        &services,
        &Order {
            id: format!("{run_id}-1"),
            user: "ann".into(),
            sku: "A1".into(),
            qty: 2,
            amount: 40,
        },
    )
    .await?;
    let second = place_order(
        &client,
        &services,
        &Order {
            id: format!("{run_id}-2"),
            user: "ann".into(),
            sku: "A1".into(),
            qty: 1,
            amount: 500,
        },
    )
    .await?;
    Ok(Report {
        first,
        second,
        orders: sqlx::query_as("SELECT id, status FROM orders ORDER BY id")
            .fetch_all(&services.orders)
            .await?,
        stock: sqlx::query_scalar("SELECT qty FROM stock WHERE sku = 'A1'")
            .fetch_one(&services.inventory)
            .await?,
        wallet: sqlx::query_scalar("SELECT balance FROM wallet WHERE user = 'ann'")
            .fetch_one(&services.payment)
            .await?,
    })
}
