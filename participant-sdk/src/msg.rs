//! Half messages in code: a builder whose [`Msg::do_and_submit`] runs the initiator's local
//! work inside the barrier on its own database and submits the message only once that work
//! committed (DESIGN §3, §5).
//!
//! If the initiator dies between its commit and the submit, the coordinator checks back at
//! `query_prepared` (mount [`crate::axum::query_prepared`] there): the barrier row the local
//! transaction wrote says "committed", so the message is delivered; had it rolled back, the
//! check-back records that, and the message fails without being delivered.

use std::time::Duration;

use serde::Serialize;

use crate::api::{Accepted, MsgStep, PutMsg, TxOptions};
use crate::client::{Client, ClientError};

/// What can go wrong with a message.
#[derive(Debug, thiserror::Error)]
pub enum MsgError<E = std::convert::Infallible> {
    /// A payload could not be serialised.
    #[error("payload of step {step}: {source}")]
    Payload {
        /// The step index.
        step: usize,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The coordinator refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The local work failed; its transaction rolled back and the message was aborted.
    #[error("local work failed: {0}")]
    Work(E),
    /// The local database failed; whether the work committed is for the check-back to say.
    #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
    #[error("local database: {0}")]
    Db(sqlx::Error),
    /// The local work of this gid ran before (a retried call; the message is submitted),
    /// or the check-back already decided it rolled back: nothing ran now.
    #[error("the local work of this message already ran, or was ruled rolled back")]
    AlreadyDone,
}

/// Builds a message and stores it with the coordinator.
///
/// ```no_run
/// # async fn demo(pool: sqlx::SqlitePool) -> Result<(), Box<dyn std::error::Error>> {
/// let client = dtx::Client::new("http://127.0.0.1:36789");
/// let order = serde_json::json!({"order": 7, "total": 1200});
/// let msg = dtx::Msg::new("order-7")
///     .add_kafka("orders", None, &order)?
///     .add_http("http://127.0.0.1:8085/loyalty/points", &order)?
///     .query_prepared("http://127.0.0.1:8081/orders/query_prepared");
/// msg.do_and_submit(&client, &pool, async |conn: &mut sqlx::SqliteConnection| {
///     sqlx::query("INSERT INTO orders (id, total) VALUES (7, 1200)")
///         .execute(&mut *conn)
///         .await
///         .map(|_| ())
/// })
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Msg {
    req: PutMsg,
}

impl Msg {
    /// A message with this gid (the barrier row of the local work is keyed by it).
    pub fn new(gid: impl Into<String>) -> Self {
        Self {
            req: PutMsg {
                gid: Some(gid.into()),
                ..PutMsg::default()
            },
        }
    }

    fn add<P: Serialize + ?Sized>(mut self, action: String, payload: &P) -> Result<Self, MsgError> {
        let step = self.req.steps.len();
        let payload =
            serde_json::to_value(payload).map_err(|source| MsgError::Payload { step, source })?;
        self.req.steps.push(MsgStep {
            action,
            payload: Some(payload),
            ..MsgStep::default()
        });
        Ok(self)
    }

    /// A step calling `url` with `payload` as its JSON body.
    pub fn add_http<P: Serialize + ?Sized>(
        self,
        url: impl Into<String>,
        payload: &P,
    ) -> Result<Self, MsgError> {
        self.add(url.into(), payload)
    }

    /// A step publishing `payload` (JSON) to Kafka `topic`, keyed by `key` (default: the
    /// gid).
    pub fn add_kafka<P: Serialize + ?Sized>(
        self,
        topic: &str,
        key: Option<&str>,
        payload: &P,
    ) -> Result<Self, MsgError> {
        let target = match key {
            Some(k) => format!("kafka://{topic}?{}", serde_urlencoded_key(k)),
            None => format!("kafka://{topic}"),
        };
        self.add(target, payload)
    }

    /// Where the coordinator checks back when neither submit nor abort arrives in time.
    pub fn query_prepared(mut self, url: impl Into<String>) -> Self {
        self.req.query_prepared = Some(url.into());
        self
    }

    /// How long the coordinator waits for submit or abort before it checks back.
    pub fn timeout_to_fail(mut self, d: Duration) -> Self {
        self.req.options.timeout_to_fail_ms = Some(d.as_millis() as u64);
        self
    }

    /// Base of the delivery retries' backoff.
    pub fn retry_interval(mut self, d: Duration) -> Self {
        self.req.options.retry_interval_ms = Some(d.as_millis() as u64);
        self
    }

    /// Delivers no sooner than `d` after [`Msg::submit`] (not for prepared messages).
    pub fn delay(mut self, d: Duration) -> Self {
        self.req.delay_ms = Some(d.as_millis() as u64);
        self
    }

    /// All options at once.
    pub fn options(mut self, options: TxOptions) -> Self {
        self.req.options = options;
        self
    }

    /// The request this builder sends.
    pub fn request(&self) -> &PutMsg {
        &self.req
    }

    async fn put(&self, client: &Client, prepare: bool) -> Result<Accepted, ClientError> {
        let mut req = self.req.clone();
        req.prepare = prepare;
        client.put_msg(&req).await
    }

    /// Stores and delivers it at once (a reliable message, no local transaction to wait for).
    pub async fn submit(&self, client: &Client) -> Result<Accepted, MsgError> {
        Ok(self.put(client, false).await?)
    }

    /// Stores it invisibly: nothing is delivered before [`Client::submit`] or a check-back.
    pub async fn prepare(&self, client: &Client) -> Result<Accepted, MsgError> {
        Ok(self.put(client, true).await?)
    }

    /// Prepares the message, runs `work` in a transaction of `pool` together with the
    /// message's barrier row, then submits; aborts the message if `work` fails. A submit
    /// that does not get through is not an error: the work is committed, and the
    /// coordinator's check-back will find it and deliver.
    #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
    pub async fn do_and_submit<DB, T, E>(
        &self,
        client: &Client,
        pool: &sqlx::Pool<DB>,
        work: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, E>,
    ) -> Result<T, MsgError<E>>
    where
        DB: crate::barrier::BarrierBackend,
    {
        let accepted = self.put(client, true).await?;
        let gid = accepted.gid;
        let ctx = crate::BranchContext::new(&gid, crate::TransType::Msg, "00", crate::Op::Msg);
        match crate::barrier::call(pool, &ctx, work).await {
            Ok(crate::barrier::Barrier::Ran(v)) => {
                let _ = client.submit(&gid, &crate::api::Finish::default()).await;
                Ok(v)
            }
            // The work committed before (a retried call): the message is due, so submit.
            Ok(crate::barrier::Barrier::Skipped(crate::barrier::Skip::Duplicate)) => {
                let _ = client.submit(&gid, &crate::api::Finish::default()).await;
                Err(MsgError::AlreadyDone)
            }
            // The check-back found no local transaction and recorded a rollback: the
            // message has failed, and this late work must not run.
            Ok(crate::barrier::Barrier::Skipped(_)) => Err(MsgError::AlreadyDone),
            Err(crate::barrier::BarrierError::Work(e)) => {
                let _ = client
                    .abort(
                        &gid,
                        &crate::api::Finish {
                            reason: Some("the initiator's local work failed".into()),
                            ..crate::api::Finish::default()
                        },
                    )
                    .await;
                Err(MsgError::Work(e))
            }
            // The commit may or may not have happened: the check-back decides.
            Err(crate::barrier::BarrierError::Db(e)) => Err(MsgError::Db(e)),
        }
    }
}

fn serde_urlencoded_key(k: &str) -> String {
    let mut out = String::from("key=");
    for b in k.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_steps() {
        let m = Msg::new("g1")
            .add_kafka("orders", Some("cust 7"), &serde_json::json!({"a": 1}))
            .unwrap()
            .add_http("http://h/x", &1)
            .unwrap()
            .query_prepared("http://h/qp");
        let r = m.request();
        assert_eq!(r.steps[0].action, "kafka://orders?key=cust%207");
        assert_eq!(r.steps[1].payload, Some(serde_json::json!(1)));
        assert_eq!(r.query_prepared.as_deref(), Some("http://h/qp"));
    }
}
