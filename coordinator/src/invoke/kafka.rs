//! Publishing message steps to Kafka (`kafka://TOPIC[?key=KEY]`, DESIGN §3).
//!
//! The producer is idempotent with `acks=all`: a step succeeds only when the broker has
//! acknowledged the record. A broker that is down (or a topic that does not exist) is a
//! transient error like any other: the step is retried with backoff and, once its budget
//! is spent, waits for an operator — nothing is dropped. Records carry the headers
//! `dtx-gid`, `dtx-branch-id`, `dtx-trans-type` and `traceparent`; the key is the gid
//! unless the target names one.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tracing::warn;

use super::http::BranchCall;
use crate::engine::Outcome;

/// Parses `kafka://TOPIC[?key=KEY]` into the topic and the key, if one is named.
pub fn parse_target(target: &str) -> Result<(String, Option<String>), String> {
    let rest = target
        .strip_prefix("kafka://")
        .ok_or_else(|| format!("`{target}` is not kafka://TOPIC"))?;
    let (topic, query) = rest.split_once('?').unwrap_or((rest, ""));
    let topic = topic.trim_end_matches('/');
    if topic.is_empty()
        || topic.len() > 249
        || !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "`{topic}` is not a Kafka topic name (1 to 249 of A-Z a-z 0-9 . _ -)"
        ));
    }
    let mut key = None;
    for (k, v) in url_pairs(query) {
        match k.as_str() {
            "key" if !v.is_empty() => key = Some(v),
            "key" => return Err("key= is empty".into()),
            other => return Err(format!("unknown parameter `{other}` (only key=)")),
        }
    }
    Ok((topic.to_owned(), key))
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_default()
}

/// Publishes message steps to Kafka.
#[derive(Clone)]
pub struct KafkaInvoker {
    config: ClientConfig,
    producer: Arc<RwLock<FutureProducer>>,
}

impl std::fmt::Debug for KafkaInvoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaInvoker").finish_non_exhaustive()
    }
}

impl KafkaInvoker {
    /// A producer for `brokers` (`host:port,...`), with extra librdkafka properties.
    pub fn new(brokers: &str, extra: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("message.timeout.ms", "10000")
            .set("client.id", "dtx-coordinator");
        for (k, v) in extra {
            config.set(k, v);
        }
        // Not overridable: what "acknowledged" means to dtx.
        config.set("enable.idempotence", "true").set("acks", "all");
        let producer = config
            .create()
            .map_err(|e| format!("Kafka producer for {brokers}: {e}"))?;
        Ok(Self {
            config,
            producer: Arc::new(RwLock::new(producer)),
        })
    }

    fn producer(&self) -> Option<FutureProducer> {
        self.producer.read().ok().map(|p| p.clone())
    }

    /// Publishes one step; `Success` once the broker acknowledged the record.
    pub async fn publish(&self, call: &BranchCall<'_>) -> Outcome {
        let (topic, key) = match parse_target(call.target) {
            Ok(t) => t,
            // Checked at submit; a stored target that no longer parses needs a human.
            Err(e) => return Outcome::Failure(e),
        };
        let key = key.unwrap_or_else(|| call.gid.to_owned());
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "dtx-gid",
                value: Some(call.gid),
            })
            .insert(Header {
                key: "dtx-branch-id",
                value: Some(call.branch_id),
            })
            .insert(Header {
                key: "dtx-trans-type",
                value: Some(call.trans_type.as_str()),
            });
        if let Some(tp) = call.traceparent {
            headers = headers.insert(Header {
                key: "traceparent",
                value: Some(tp),
            });
        }
        let Some(producer) = self.producer() else {
            return Outcome::Transient("Kafka producer unavailable".into());
        };
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(call.payload)
            .headers(headers);
        match producer.send(record, Timeout::After(call.timeout)).await {
            Ok(_) => Outcome::Success,
            Err((e, _)) => {
                // An idempotent producer can end in a fatal state (e.g. after a sequence
                // gap): start a fresh one for the next try.
                if let Some((code, reason)) = producer.client().fatal_error() {
                    warn!(%code, reason, "Kafka producer failed fatally; starting a new one");
                    if let (Ok(fresh), Ok(mut slot)) = (
                        self.config.create::<FutureProducer>(),
                        self.producer.write(),
                    ) {
                        *slot = fresh;
                    }
                }
                Outcome::Transient(format!("Kafka publish to {topic}: {e}"))
            }
        }
    }

    /// Waits up to `timeout` for records still queued (shutdown).
    pub fn flush(&self, timeout: std::time::Duration) {
        if let Some(p) = self.producer() {
            let _ = p.flush(Timeout::After(timeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_target;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("kafka://orders").unwrap(),
            ("orders".into(), None)
        );
        assert_eq!(
            parse_target("kafka://orders.v1?key=customer-7").unwrap(),
            ("orders.v1".into(), Some("customer-7".into()))
        );
        assert!(parse_target("kafka://").is_err());
        assert!(parse_target("kafka://bad topic").is_err());
        assert!(parse_target("kafka://t?partition=3").is_err());
        assert!(parse_target("http://x/y").is_err());
    }
}
