//! The transactional outbox: [`enqueue`] writes a message in the caller's business
//! transaction (it exists exactly when that transaction commits); a [`Relay`] publishes
//! the rows in order and marks them sent.
//!
//! A relay that dies between publishing and marking publishes those rows again when it
//! (or another relay) resumes: delivery is at-least-once, and consumers apply each
//! message once through the [`super::inbox`] (records carry `dtx-gid` = the message id
//! and `dtx-branch-id` = `outbox`). On PostgreSQL and MySQL, relays claim batches with
//! `FOR UPDATE SKIP LOCKED`, so several may run (order per key then holds within a relay's
//! batch; run one relay where the order across batches matters); on SQLite, run one.

use super::MessagingBackend;

/// The `dtx-branch-id` of outbox records.
pub const OUTBOX_BRANCH: &str = "outbox";

/// Writes a message to the outbox on `conn` (inside the caller's transaction); returns
/// its id.
pub async fn enqueue<DB: MessagingBackend>(
    conn: &mut DB::Connection,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> Result<String, sqlx::Error> {
    let msg_id = format!("ob-{:032x}", fastrand::u128(..));
    DB::outbox_insert(conn, &msg_id, topic, key, payload).await?;
    Ok(msg_id)
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// Messages not yet published.
    pub unsent: i64,
    /// Age of the oldest of them, in seconds.
    pub oldest_s: Option<f64>,
}

/// Reads the outbox's lag.
pub async fn lag<DB: MessagingBackend>(pool: &sqlx::Pool<DB>) -> Result<Lag, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let (unsent, oldest_s) = DB::outbox_lag(&mut conn).await?;
    Ok(Lag { unsent, oldest_s })
}

#[cfg(feature = "kafka")]
pub use relay::{Relay, RelayError};

#[cfg(feature = "kafka")]
mod relay {
    use std::time::Duration;

    use rdkafka::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::util::Timeout;

    use super::OUTBOX_BRANCH;
    use crate::messaging::{MessagingBackend, OutboxRow};

    /// What can stop a batch.
    #[derive(Debug, thiserror::Error)]
    pub enum RelayError {
        /// The database failed.
        #[error("outbox database: {0}")]
        Db(#[from] sqlx::Error),
        /// The producer could not be made.
        #[error("Kafka: {0}")]
        Kafka(#[from] rdkafka::error::KafkaError),
    }

    /// Publishes outbox rows to Kafka (idempotent producer, `acks=all`).
    pub struct Relay<DB: MessagingBackend> {
        pool: sqlx::Pool<DB>,
        producer: FutureProducer,
        batch: i64,
    }

    impl<DB: MessagingBackend> Relay<DB> {
        /// A relay for `pool`'s outbox publishing to `brokers`, `batch` rows at a time.
        pub fn new(pool: sqlx::Pool<DB>, brokers: &str, batch: i64) -> Result<Self, RelayError> {
            let producer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("message.timeout.ms", "10000")
                .create()?;
            Ok(Self {
                pool,
                producer,
                batch: batch.max(1),
            })
        }

        async fn publish(&self, rows: &[OutboxRow]) -> Vec<i64> {
            // Sent in id order and awaited together: the idempotent producer keeps the
            // order within a partition (so per key).
            let sends = rows.iter().map(|r| {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "dtx-gid",
                        value: Some(r.msg_id.as_str()),
                    })
                    .insert(Header {
                        key: "dtx-branch-id",
                        value: Some(OUTBOX_BRANCH),
                    });
                let record = FutureRecord::to(&r.topic)
                    .key(&r.key)
                    .payload(&r.payload)
                    .headers(headers);
                let id = r.id;
                let send = self
                    .producer
                    .send(record, Timeout::After(Duration::from_secs(10)));
                async move { send.await.ok().map(|_| id) }
            });
            futures_util::future::join_all(sends)
                .await
                .into_iter()
                .flatten()
                .collect()
        }

        /// Publishes one batch of unsent rows and marks those the broker acknowledged;
        /// returns how many.
        pub async fn publish_batch(&self) -> Result<usize, RelayError> {
            if DB::SKIP_LOCKED {
                // The claim's locks keep other relays off these rows until the commit.
                let mut tx = self.pool.begin_with(DB::BEGIN).await?;
                let rows = DB::outbox_claim(&mut tx, self.batch).await?;
                let sent = self.publish(&rows).await;
                for id in &sent {
                    DB::outbox_mark_sent(&mut tx, *id).await?;
                }
                tx.commit().await?;
                Ok(sent.len())
            } else {
                let rows = {
                    let mut conn = self.pool.acquire().await?;
                    DB::outbox_claim(&mut conn, self.batch).await?
                };
                let sent = self.publish(&rows).await;
                let mut tx = self.pool.begin_with(DB::BEGIN).await?;
                for id in &sent {
                    DB::outbox_mark_sent(&mut tx, *id).await?;
                }
                tx.commit().await?;
                Ok(sent.len())
            }
        }

        /// Publishes for ever: batch after batch, napping `idle` when nothing is waiting
        /// or an error occurred.
        pub async fn run(&self, idle: Duration) {
            loop {
                match self.publish_batch().await {
                    Ok(0) => tokio::time::sleep(idle).await,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox relay: batch failed; retrying");
                        tokio::time::sleep(idle).await;
                    }
                }
            }
        }
    }
}
