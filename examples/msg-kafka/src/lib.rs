//! The `msg-kafka` example: half messages from an order service to Kafka, a projection
//! kept through the consumer inbox. See `main.rs`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dtx::messaging::inbox::{Inbox, InboxRecord};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

/// Where things are.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory of the SQLite files.
    pub data_dir: PathBuf,
    /// Kafka brokers; `None` starts a tansu broker.
    pub brokers: Option<String>,
    /// A running coordinator (it must have `DTX_KAFKA_BROKERS` set to the same brokers);
    /// `None` runs one in-process.
    pub coordinator: Option<String>,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Report {
    /// The brokers used.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// Each order and its message's final status.
    pub orders: Vec<(String, String)>,
    /// Records the projection applied (through its inbox).
    pub applied: usize,
    /// The projection: total ordered per customer.
    pub totals: Vec<(String, i64)>,
}

/// The event the order service publishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Order id.
    pub order: String,
    /// Customer.
    pub customer: String,
    /// Amount.
    pub amount: i64,
}

struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_tansu() -> anyhow::Result<(String, Tansu)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let home = std::env::var("HOME").unwrap_or_default();
    let bin = [PathBuf::from("tansu"), Path::new(&home).join(".cargo/bin/tansu")]
        .into_iter()
        .find(|b| Command::new(b).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
        .context("no Kafka broker: set DTX_KAFKA_BROKERS, or install tansu (cargo install tansu --locked --features dynostore)")?;
    let child = Command::new(bin)
        .args([
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let guard = Tansu(child);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        if Instant::now() > deadline {
            bail!("tansu did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((addr, guard))
}

async fn sqlite(path: &Path) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    Ok(SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?)
}

/// Runs the example.
pub async fn run(settings: Settings) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&settings.data_dir)?;
    let (brokers, _tansu) = match settings.brokers.clone() {
        Some(b) => (b, None),
        None => {
            let (b, guard) = start_tansu()?;
            (b, Some(guard))
        }
    };
    let run_id = format!("{:08x}", fastrand::u32(..));
    let topic = format!("orders-{run_id}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }

    // The coordinator.
    let (_stop, url) = match settings.coordinator.clone() {
        Some(url) => (None, url),
        None => {
            let db = settings.data_dir.join(format!("coordinator-{run_id}.db"));
            let config = dtx_coordinator::config::Config {
                database_url: format!("sqlite://{}", db.display()),
                listen: "127.0.0.1:0".into(),
                kafka_brokers: Some(brokers.clone()),
                ..Default::default()
            };
            let (addr, stop) = dtx_coordinator::server::start_in_background(config).await?;
            (Some(stop), format!("http://{addr}"))
        }
    };
    let client = dtx::Client::new(&url);

    // The order service: orders and the barrier on its own SQLite file, and the
    // check-back endpoint the coordinator calls if it dies before submitting.
    let orders = sqlite(&settings.data_dir.join("orders.db")).await?;
    dtx::barrier::migrate(&orders).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, amount INTEGER NOT NULL CHECK (amount > 0))")
        .execute(&orders)
        .await?;
    let app: axum::Router = axum::Router::new().route(
        "/orders/query_prepared",
        dtx::axum::query_prepared(orders.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let query_prepared = format!("http://{}/orders/query_prepared", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Three orders; the third breaks a constraint, so its message is aborted unseen.
    let mut report_orders = Vec::new();
    for (n, customer, amount) in [(1, "ann", 40), (2, "bob", 25), (3, "ann", -5)] {
        let event = OrderPlaced {
            order: format!("order-{run_id}-{n}"),
            customer: customer.into(),
            amount,
        };
        let gid = event.order.clone();
        let msg = dtx::Msg::new(&gid)
            .add_kafka(&topic, Some(customer), &event)?
            .query_prepared(&query_prepared);
        let result = msg
            .do_and_submit(
                &client,
                &orders,
                async |conn: &mut sqlx::SqliteConnection| {
                    sqlx::query("INSERT INTO orders (id, customer, amount) VALUES (?, ?, ?)")
                        .bind(&event.order)
                        .bind(&event.customer)
                        .bind(event.amount)
                        .execute(&mut *conn)
                        .await
                },
            )
            .await;
        if let Err(e) = &result {
            println!("order {gid} not placed: {e}");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let s = client.query(&gid).await?.status;
            if s.is_final() || Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        report_orders.push((gid, status.to_string()));
    }

    // The projection service: totals per customer, kept through its inbox.
    let projection = sqlite(&settings.data_dir.join(format!("projection-{run_id}.db"))).await?;
    dtx::messaging::migrate(&projection).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS totals (customer TEXT PRIMARY KEY, total INTEGER NOT NULL)",
    )
    .execute(&projection)
    .await?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "order-totals")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let inbox = Inbox::new(projection.clone(), "order-totals");
    let consuming = tokio::spawn(async move {
        inbox
            .run(&consumer, async |conn: &mut sqlx::SqliteConnection, r: &InboxRecord| {
                let e: OrderPlaced = match serde_json::from_slice(&r.payload) {
                    Ok(e) => e,
                    Err(_) => return Ok::<(), sqlx::Error>(()),
                };
                sqlx::query("INSERT INTO totals (customer, total) VALUES (?, ?) ON CONFLICT (customer) DO UPDATE SET total = total + excluded.total")
                    .bind(&e.customer)
                    .bind(e.amount)
                    .execute(&mut *conn)
                    .await
                    .map(|_| ())
            })
            .await
    });
    let delivered = report_orders
        .iter()
        .filter(|(_, s)| s == "succeeded")
        .count() as i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dtx_inbox")
            .fetch_one(&projection)
            .await?;
        if applied >= delivered || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consuming.abort();
    server.abort();
    let totals: Vec<(String, i64)> =
        sqlx::query_as("SELECT customer, total FROM totals ORDER BY customer")
            .fetch_all(&projection)
            .await?;
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dtx_inbox")
        .fetch_one(&projection)
        .await?;
    Ok(Report {
        brokers,
        topic,
        orders: report_orders,
        applied: applied as usize,
        totals,
    })
}
