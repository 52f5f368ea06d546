//! A real Kafka-protocol broker for the tests: the one named by `DTX_TEST_KAFKA_BROKERS`,
//! else a tansu broker (`cargo install tansu --locked --features dynostore`; scripts/test
//! installs it) started on a free loopback port, in memory. Topics are created explicitly
//! (tansu creates none on first use), records are read back with a plain consumer.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A broker the tests can publish to and read from.
pub struct Broker {
    /// `host:port` for `bootstrap.servers`.
    pub brokers: String,
    child: Option<Child>,
    port: u16,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Key, as text.
    pub key: Option<String>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers, as text.
    pub headers: Vec<(String, String)>,
}

impl Record {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn tansu() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| PathBuf::from(d).join("tansu"))
        .chain([PathBuf::from(home).join(".cargo/bin/tansu")])
        .collect::<Vec<_>>();
    candidates.into_iter().find(|p| p.exists()).unwrap_or_else(|| {
        panic!(
            "no Kafka broker for the tests: set DTX_TEST_KAFKA_BROKERS=host:port, or install tansu \
             (`cargo install tansu --locked --features dynostore`, ~15 min; ./scripts/test does it)"
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Broker {
    /// The broker of `DTX_TEST_KAFKA_BROKERS`, else one of our own.
    pub async fn start() -> Self {
        match std::env::var("DTX_TEST_KAFKA_BROKERS") {
            Ok(b) if !b.is_empty() => Self {
                brokers: b,
                child: None,
                port: 0,
            },
            _ => Self::start_own().await,
        }
    }

    /// A tansu broker of this test's own (one that the test may stop and start).
    pub async fn start_own() -> Self {
        let port = free_port();
        let mut me = Self {
            brokers: format!("127.0.0.1:{port}"),
            child: None,
            port,
        };
        me.spawn().await;
        me
    }

    async fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu())
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
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&self.brokers).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 20 s",
                self.brokers
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the broker (kill); its in-memory records are gone.
    pub fn stop(&mut self) {
        assert!(
            self.port != 0,
            "cannot stop a broker given by DTX_TEST_KAFKA_BROKERS"
        );
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a stopped broker again on the same port (empty: create topics again).
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    /// Creates a one-partition topic.
    pub async fn create_topic(&self, topic: &str) {
        let admin: AdminClient<DefaultClientContext> =
            self.config().create().expect("Kafka admin client");
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create topic");
        for r in results {
            if let Err((t, e)) = r {
                assert!(
                    e == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                    "create topic {t}: {e}"
                );
            }
        }
    }

    /// Every record of `topic` (partition 0) from the start: read until the partition's
    /// high watermark is reached *and* nothing more has come for `quiet` (at least 2 s: a
    /// new consumer needs a while for its first fetch, and the test broker's watermark can
    /// lag its newest records).
    pub fn records(&self, topic: &str, quiet: Duration) -> Vec<Record> {
        let quiet = quiet.max(Duration::from_secs(2));
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", format!("dtx-test-{:08x}", fastrand::u32(..)))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .expect("Kafka consumer");
        let (_, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .expect("watermarks");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let mut next_offset = 0;
        let mut last = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(30);
        while next_offset < high || last.elapsed() < quiet {
            assert!(
                Instant::now() < deadline,
                "read {} of at least {high} records of {topic} in 30 s",
                out.len()
            );
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                last = Instant::now();
                next_offset = m.offset() + 1;
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_owned(),
                                    String::from_utf8_lossy(x.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
