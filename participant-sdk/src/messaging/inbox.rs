//! The consumer inbox: each Kafka record is applied inside the consumer's own database
//! transaction together with a dedupe row keyed by (consumer, gid, branch id), so a record
//! delivered twice — the normal case with at-least-once delivery — takes effect once. The
//! record's offset is committed only after that database commit.

use super::MessagingBackend;
use crate::barrier::BarrierError;

/// The branch id of records that carry no `dtx-branch-id` header.
pub const RECORD_BRANCH: &str = "record";

/// What happened to a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied<T> {
    /// The work ran and committed.
    Applied(T),
    /// This consumer applied the record before; nothing ran.
    Duplicate,
}

/// A record as the inbox hands it to the work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl InboxRecord {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The dedupe key: the `dtx-gid` and `dtx-branch-id` headers dtx writes (half
    /// messages and the outbox), else the record's position.
    pub fn dedupe_key(&self) -> (String, String) {
        match self.header("dtx-gid") {
            Some(gid) => (
                gid.to_owned(),
                self.header("dtx-branch-id")
                    .unwrap_or(RECORD_BRANCH)
                    .to_owned(),
            ),
            None => (
                format!("{}/{}/{}", self.topic, self.partition, self.offset),
                RECORD_BRANCH.to_owned(),
            ),
        }
    }
}

/// The inbox of one consumer (its name is part of the dedupe key: two consumers of one
/// topic each apply every record once).
#[derive(Debug)]
pub struct Inbox<DB: MessagingBackend> {
    pool: sqlx::Pool<DB>,
    consumer: String,
}

impl<DB: MessagingBackend> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            consumer: self.consumer.clone(),
        }
    }
}

impl<DB: MessagingBackend> Inbox<DB> {
    /// The inbox of `consumer` on `pool` (tables from [`super::migrate`]).
    pub fn new(pool: sqlx::Pool<DB>, consumer: impl Into<String>) -> Self {
        Self {
            pool,
            consumer: consumer.into(),
        }
    }

    /// Runs `work` once per `(gid, branch_id)` for this consumer, in one database
    /// transaction with the dedupe row; an error rolls both back (a retry runs it again).
    pub async fn apply<T, E>(
        &self,
        gid: &str,
        branch_id: &str,
        work: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, E>,
    ) -> Result<Applied<T>, BarrierError<E>> {
        let mut tx = self.pool.begin_with(DB::BEGIN).await?;
        if DB::inbox_insert(&mut tx, &self.consumer, gid, branch_id).await? == 0 {
            tx.commit().await?;
            return Ok(Applied::Duplicate);
        }
        match work(&mut tx).await {
            Ok(v) => {
                tx.commit().await?;
                Ok(Applied::Applied(v))
            }
            Err(e) => {
                tx.rollback().await?;
                Err(BarrierError::Work(e))
            }
        }
    }

    /// Applies a record (see [`InboxRecord::dedupe_key`]).
    pub async fn apply_record<T, E>(
        &self,
        record: &InboxRecord,
        work: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, E>,
    ) -> Result<Applied<T>, BarrierError<E>> {
        let (gid, branch_id) = record.dedupe_key();
        self.apply(&gid, &branch_id, work).await
    }
}

#[cfg(feature = "kafka")]
mod consume {
    use std::time::Duration;

    use rdkafka::Message;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::error::KafkaError;
    use rdkafka::message::Headers;

    use super::{Inbox, InboxRecord};
    use crate::messaging::MessagingBackend;

    impl InboxRecord {
        /// Copies a consumed record.
        pub fn from_message(m: &impl Message) -> Self {
            Self {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| (x.key.to_owned(), x.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        }
    }

    impl<DB: MessagingBackend> Inbox<DB> {
        /// Consumes `consumer` (subscribed or assigned, with `enable.auto.commit=false`)
        /// for ever: each record is applied through the inbox — retried with backoff
        /// while `work` or the database fails, so records of a partition stay in order —
        /// and its offset is committed after the database commit. Returns on a consumer
        /// error.
        pub async fn run<E: std::fmt::Display>(
            &self,
            consumer: &StreamConsumer,
            work: impl AsyncFn(&mut DB::Connection, &InboxRecord) -> Result<(), E>,
        ) -> Result<(), KafkaError> {
            loop {
                let m = consumer.recv().await?;
                let record = InboxRecord::from_message(&m);
                let mut delay = Duration::from_millis(100);
                loop {
                    match self
                        .apply_record(&record, async |conn: &mut DB::Connection| {
                            work(conn, &record).await
                        })
                        .await
                    {
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(topic = %record.topic, offset = record.offset, error = %e, "inbox: applying a record failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                    }
                }
                consumer.commit_message(&m, CommitMode::Sync)?;
            }
        }
    }
}
