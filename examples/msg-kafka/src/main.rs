//! `cargo run -p msg-kafka`: an order service stores each order and a half message to
//! Kafka in one local transaction; a projection service consumes the topic through its
//! inbox. Uses the broker of `DTX_KAFKA_BROKERS`, or starts a tansu broker (`cargo install
//! tansu --locked --features dynostore`). Data: `./msg-kafka-data` (or `MSG_KAFKA_DATA`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::var("MSG_KAFKA_DATA").unwrap_or_else(|_| "msg-kafka-data".into());
    let report = msg_kafka::run(msg_kafka::Settings {
        data_dir: dir.into(),
        brokers: std::env::var("DTX_KAFKA_BROKERS")
            .ok()
            .filter(|b| !b.is_empty()),
        coordinator: std::env::var("DTX_COORDINATOR").ok(),
    })
    .await?;
    println!("broker: {}", report.brokers);
    for (gid, status) in &report.orders {
        println!("order {gid}: {status}");
    }
    println!(
        "records of topic {} applied by the projection: {}",
        report.topic, report.applied
    );
    for (customer, total) in &report.totals {
        println!("projection: {customer} ordered for {total}");
    }
    Ok(())
}
