//! The SDK's consumer inbox and transactional outbox against a real Kafka-protocol broker:
//! a redelivered record takes effect once, offsets are committed after the database, and
//! an outbox relay killed in the middle of its batches loses nothing while the inbox
//! applies each message once.

use std::collections::BTreeMap;
use std::time::Duration;

use dtx::messaging::inbox::{Applied, Inbox, InboxRecord};
use dtx::messaging::outbox::{self, Relay};
use dtx_tests::backend::{fresh_pg_pool, fresh_sqlite_pool};
use dtx_tests::{Broker, eventually};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn topic(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

async fn projection_db() -> (sqlx::SqlitePool, dtx_tests::Database) {
    let (pool, db) = fresh_sqlite_pool().await;
    dtx::messaging::migrate(&pool).await.unwrap();
    sqlx::query("CREATE TABLE applied (n INTEGER NOT NULL, total INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO applied VALUES (0, 0)")
        .execute(&pool)
        .await
        .unwrap();
    (pool, db)
}

async fn add(conn: &mut sqlx::SqliteConnection, amount: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE applied SET n = n + 1, total = total + ?")
        .bind(amount)
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

async fn applied(pool: &sqlx::SqlitePool) -> (i64, i64) {
    sqlx::query_as("SELECT n, total FROM applied")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_applies_a_redelivered_record_once_and_commits_after_the_database() {
    let broker = Broker::start().await;
    let topic = topic("inbox");
    broker.create_topic(&topic).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .create()
        .unwrap();
    // The same message twice (a redelivery), then one without dtx headers.
    for (amount, dtx_headers) in [(5, true), (5, true), (7, false)] {
        let mut headers = OwnedHeaders::new();
        if dtx_headers {
            headers = headers
                .insert(Header {
                    key: "dtx-gid",
                    value: Some("order-1"),
                })
                .insert(Header {
                    key: "dtx-branch-id",
                    value: Some("01"),
                });
        }
        let payload = amount.to_string();
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("k")
                    .payload(&payload)
                    .headers(headers),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .unwrap();
    }

    let (pool, _db) = projection_db().await;
    let group = format!("g-{:08x}", fastrand::u32(..));
    let consumer = || -> StreamConsumer {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &broker.brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        c
    };
    let inbox = Inbox::new(pool.clone(), "projection");
    let task = {
        let inbox = inbox.clone();
        let c = consumer();
        tokio::spawn(async move {
            inbox
                .run(
                    &c,
                    async |conn: &mut sqlx::SqliteConnection, r: &InboxRecord| {
                        let amount: i64 = std::str::from_utf8(&r.payload).unwrap().parse().unwrap();
                        add(conn, amount).await
                    },
                )
                .await
        })
    };
    let (n, total) = eventually(Duration::from_secs(30), "two records applied", || {
        let pool = pool.clone();
        async move { Some(applied(&pool).await).filter(|(n, _)| *n >= 2) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(applied(&pool).await, (n, total));
    assert_eq!((n, total), (2, 12), "5 once (not twice), and 7");
    task.abort();

    // The offsets were committed: the group's committed position is past all three.
    let c = consumer();
    let committed = c
        .committed(Duration::from_secs(10))
        .unwrap()
        .find_partition(&topic, 0)
        .unwrap()
        .offset();
    assert_eq!(committed, Offset::Offset(3));

    // Applying the same record again by hand is a duplicate too.
    let again = InboxRecord {
        topic: topic.clone(),
        partition: 0,
        offset: 1,
        key: None,
        payload: b"5".to_vec(),
        headers: vec![
            ("dtx-gid".into(), b"order-1".to_vec()),
            ("dtx-branch-id".into(), b"01".to_vec()),
        ],
    };
    let r = inbox
        .apply_record(&again, async |conn: &mut sqlx::SqliteConnection| {
            add(conn, 5).await
        })
        .await
        .unwrap();
    assert_eq!(r, Applied::Duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_batch_loses_nothing_and_the_inbox_applies_each_once() {
    let broker = Broker::start().await;
    let topic = topic("outbox");
    broker.create_topic(&topic).await;
    // The producing service: orders and the outbox on PostgreSQL.
    let (pg, _pgdb) = fresh_pg_pool().await;
    dtx::messaging::migrate(&pg).await.unwrap();
    sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL)")
        .execute(&pg)
        .await
        .unwrap();
    const N: i64 = 300;
    let mut expected = BTreeMap::new();
    for chunk in (1..=N).collect::<Vec<_>>().chunks(25) {
        let mut tx = pg.begin().await.unwrap();
        for &id in chunk {
            sqlx::query("INSERT INTO orders VALUES ($1, $2)")
                .bind(id)
                .bind(id * 10)
                .execute(&mut *tx)
                .await
                .unwrap();
            let msg_id = outbox::enqueue::<sqlx::Postgres>(
                &mut tx,
                &topic,
                &format!("customer-{}", id % 7),
                (id * 10).to_string().as_bytes(),
            )
            .await
            .unwrap();
            expected.insert(msg_id, id * 10);
        }
        tx.commit().await.unwrap();
    }
    // A business transaction that rolls back leaves no message.
    let mut tx = pg.begin().await.unwrap();
    let ghost = outbox::enqueue::<sqlx::Postgres>(&mut tx, &topic, "x", b"999999")
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(outbox::lag(&pg).await.unwrap().unsent, N);

    // A relay that dies after publishing a batch and before marking it: the database
    // refuses the marks (a trigger), so the batch's transaction rolls back after the
    // broker acknowledged every record.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_marks() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'relay died before marking'; END $$; \
         CREATE TRIGGER refuse_marks BEFORE UPDATE ON dtx_outbox \
         FOR EACH ROW EXECUTE FUNCTION refuse_marks();",
    )
    .execute(&pg)
    .await
    .unwrap();
    let relay = Relay::new(pg.clone(), &broker.brokers, 40).unwrap();
    assert!(
        relay.publish_batch().await.is_err(),
        "the marks are refused"
    );
    assert_eq!(outbox::lag(&pg).await.unwrap().unsent, N, "nothing marked");
    sqlx::raw_sql("DROP TRIGGER refuse_marks ON dtx_outbox")
        .execute(&pg)
        .await
        .unwrap();

    // Then the relay is killed at random instants (its task dropped, maybe mid-batch)
    // again and again, and finally left to finish.
    let mut kills = 0;
    while outbox::lag(&pg).await.unwrap().unsent > 0 && kills < 6 {
        let relay = Relay::new(pg.clone(), &broker.brokers, 40).unwrap();
        let task = tokio::spawn(async move { relay.run(Duration::from_millis(20)).await });
        tokio::time::sleep(Duration::from_millis(fastrand::u64(10..120))).await;
        task.abort();
        let _ = task.await;
        kills += 1;
    }
    let relay = Relay::new(pg.clone(), &broker.brokers, 40).unwrap();
    while relay.publish_batch().await.unwrap() > 0 {}
    let lag = outbox::lag(&pg).await.unwrap();
    assert_eq!((lag.unsent, lag.oldest_s), (0, None));

    // Every message is on the topic at least once; the ghost never.
    let records = broker.records(&topic, Duration::from_millis(1000));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        *seen
            .entry(r.header("dtx-gid").unwrap().to_owned())
            .or_default() += 1;
        assert_eq!(r.header("dtx-branch-id"), Some("outbox"));
    }
    assert!(
        !seen.contains_key(&ghost),
        "a rolled-back message was published"
    );
    let missing: Vec<i64> = expected
        .iter()
        .filter(|(id, _)| !seen.contains_key(*id))
        .map(|(_, amount)| *amount)
        .collect();
    assert!(
        missing.is_empty(),
        "messages lost (amounts {missing:?}); {} records read",
        records.len()
    );
    let duplicates = records.len() - expected.len();
    assert!(duplicates >= 40, "the unmarked batch went out again");
    println!(
        "outbox: {N} messages, relay killed {kills} times, {} records published ({duplicates} duplicates)",
        records.len()
    );

    // Per key, the records keep the order of the outbox.
    let mut last_per_key: BTreeMap<String, i64> = BTreeMap::new();
    for r in records.iter() {
        let amount: i64 = String::from_utf8_lossy(&r.payload).parse().unwrap();
        let key = r.key.clone().unwrap();
        if let Some(prev) = last_per_key.get(&key) {
            assert!(
                amount > *prev || seen[r.header("dtx-gid").unwrap()] > 1,
                "key {key}: {amount} after {prev}"
            );
        }
        last_per_key.insert(key, amount);
    }

    // The consumer applies each message once through its inbox, duplicates included.
    let (pool, _db) = projection_db().await;
    let inbox = Inbox::new(pool.clone(), "order-totals");
    for (offset, r) in records.iter().enumerate() {
        let rec = InboxRecord {
            topic: topic.clone(),
            partition: 0,
            offset: offset as i64,
            key: r.key.clone().map(String::into_bytes),
            payload: r.payload.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect(),
        };
        let amount: i64 = String::from_utf8_lossy(&rec.payload).parse().unwrap();
        inbox
            .apply_record(&rec, async |conn: &mut sqlx::SqliteConnection| {
                add(conn, amount).await
            })
            .await
            .unwrap();
    }
    let total: i64 = expected.values().sum();
    assert_eq!(applied(&pool).await, (N, total));
}
