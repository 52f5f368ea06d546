//! `cargo run -p xa-transfer`: moves money between an account on PostgreSQL and one on
//! MariaDB with XA. Environment: `BANK_A_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`; needs `max_prepared_transactions > 0`),
//! `BANK_B_DATABASE_URL` (default `mysql://root@127.0.0.1:3306/test`), `DTX_COORDINATOR`
//! (default: an in-process coordinator on SQLite).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pg = std::env::var("BANK_A_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let my = std::env::var("BANK_B_DATABASE_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let report = xa_transfer::run(&pg, &my, std::env::var("DTX_COORDINATOR").ok()).await?;
    println!(
        "transfer of 30:  {} (committed on PostgreSQL and MariaDB)",
        report.first
    );
    println!(
        "transfer of 500: {} (alice refused; bob's prepared credit rolled back)",
        report.second
    );
    println!("alice (PostgreSQL): {}", report.alice);
    println!("bob   (MariaDB):    {}", report.bob);
    println!("transactions left prepared: {}", report.left_prepared);
    Ok(())
}
