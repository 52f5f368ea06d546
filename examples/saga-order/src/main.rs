//! `cargo run -p saga-order`: an order saga over order, inventory and payment services
//! (SQLite files in `./saga-order-data`, or `SAGA_ORDER_DATA`); the second order's payment
//! is refused and the saga compensates inventory and order. `DTX_COORDINATOR` points at a
//! running coordinator; by default one runs in-process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::var("SAGA_ORDER_DATA").unwrap_or_else(|_| "saga-order-data".into());
    let report = saga_order::run(
        std::path::Path::new(&dir),
        std::env::var("DTX_COORDINATOR").ok(),
    )
    .await?;
    println!("order 1 (2 x A1, pays 40):  {}", report.first);
    println!(
        "order 2 (1 x A1, pays 500): {} (payment refused, inventory and order compensated)",
        report.second
    );
    for (id, status) in &report.orders {
        println!("  order {id}: {status}");
    }
    println!("stock of A1: {} (10 - 2)", report.stock);
    println!("ann's wallet: {} (100 - 40)", report.wallet);
    Ok(())
}
