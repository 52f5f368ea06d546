//! `cargo run -p tcc-bank-transfer`: moves money between two PostgreSQL-backed account
//! services with TCC. Environment: `BANK_A_DATABASE_URL`, `BANK_B_DATABASE_URL` (default:
//! databases `dtx_example_bank_a` / `_b` on `postgres://postgres@127.0.0.1:5432`, created
//! if missing), `DTX_COORDINATOR` (default: an in-process coordinator on SQLite).

use sqlx::Connection;

async fn ensure_database(server: &str, name: &str) -> anyhow::Result<String> {
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
    }
    Ok(format!("{server}/{name}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = "postgres://postgres@127.0.0.1:5432";
    let bank_a_db = match std::env::var("BANK_A_DATABASE_URL") {
        Ok(u) => u,
        Err(_) => ensure_database(server, "dtx_example_bank_a").await?,
    };
    let bank_b_db = match std::env::var("BANK_B_DATABASE_URL") {
        Ok(u) => u,
        Err(_) => ensure_database(server, "dtx_example_bank_b").await?,
    };
    let settings = tcc_bank_transfer::Settings {
        bank_a_db,
        bank_b_db,
        coordinator: std::env::var("DTX_COORDINATOR").ok(),
    };
    let report = tcc_bank_transfer::run(settings).await?;
    println!("transfer of 30:  {}", report.first);
    println!("transfer of 500: {}", report.second);
    println!(
        "alice (bank A): balance {} frozen {}",
        report.alice.0, report.alice.1
    );
    println!(
        "bob   (bank B): balance {} frozen {}",
        report.bob.0, report.bob.1
    );
    Ok(())
}
