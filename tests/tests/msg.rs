//! Half messages through a real Kafka-protocol broker: delivered exactly when the
//! initiator's local transaction committed, never otherwise — through an initiator that
//! dies before submit, and through a broker outage.

use std::time::Duration;

use dtx::barrier::{self, Barrier};
use dtx::{BranchContext, Msg, Op, TransType};
use dtx_tests::backend::fresh_sqlite_pool;
use dtx_tests::{Backend, Broker, CoordinatorProc, Participant, eventually};
use serde_json::{Value, json};

/// The initiator: an orders table and the barrier on its own SQLite database, and its
/// check-back endpoint served on loopback.
struct Initiator {
    pool: sqlx::SqlitePool,
    query_prepared: String,
    _db: dtx_tests::Database,
}

impl Initiator {
    async fn start() -> Self {
        let (pool, db) = fresh_sqlite_pool().await;
        barrier::migrate(&pool).await.unwrap();
        sqlx::query("CREATE TABLE orders (gid TEXT PRIMARY KEY, total INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        let app: axum::Router =
            axum::Router::new().route("/qp", dtx::axum::query_prepared(pool.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            pool,
            query_prepared: format!("http://{addr}/qp"),
            _db: db,
        }
    }

    /// The local work: insert the order, inside the message's barrier.
    async fn commit_order(&self, gid: &str, total: i64) -> Barrier<()> {
        let ctx = BranchContext::new(gid, TransType::Msg, "00", Op::Msg);
        barrier::call(
            &self.pool,
            &ctx,
            async |conn: &mut sqlx::SqliteConnection| {
                sqlx::query("INSERT INTO orders (gid, total) VALUES (?, ?)")
                    .bind(gid)
                    .bind(total)
                    .execute(&mut *conn)
                    .await
                    .map(|_| ())
            },
        )
        .await
        .unwrap()
    }
}

/// A broker with a fresh topic, and a coordinator publishing to it.
struct Setup {
    broker: Broker,
    topic: String,
    coord: CoordinatorProc,
    _db: dtx_tests::Database,
}

impl Setup {
    async fn new() -> Self {
        let broker = Broker::start().await;
        let topic = topic();
        broker.create_topic(&topic).await;
        let db = Backend::Sqlite.fresh().await;
        let coord =
            CoordinatorProc::start(&db.url, &[("DTX_KAFKA_BROKERS", broker.brokers.as_str())])
                .await;
        Self {
            broker,
            topic,
            coord,
            _db: db,
        }
    }
}

fn topic() -> String {
    format!("orders-{:08x}", fastrand::u32(..))
}

async fn final_status(client: &dtx::Client, gid: &str) -> dtx::GlobalStatus {
    eventually(Duration::from_secs(30), "the message to be final", || {
        let client = client.clone();
        async move {
            client
                .query(gid)
                .await
                .ok()
                .map(|t| t.status)
                .filter(|s| s.is_final())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_half_message_is_published_once_with_its_headers() {
    let Setup {
        broker,
        topic,
        coord,
        _db,
    } = Setup::new().await;
    let client = coord.client();
    let initiator = Initiator::start().await;
    let points = Participant::start().await;

    let gid = format!("order-{:08x}", fastrand::u32(..));
    let order = json!({"order": gid, "total": 1200});
    let msg = Msg::new(&gid)
        .add_kafka(&topic, None, &order)
        .unwrap()
        .add_http(points.url("points/action"), &order)
        .unwrap()
        .query_prepared(&initiator.query_prepared);
    let seen_before_commit = msg
        .do_and_submit(
            &client,
            &initiator.pool,
            async |conn: &mut sqlx::SqliteConnection| {
                sqlx::query("INSERT INTO orders (gid, total) VALUES (?, 1200)")
                    .bind(&gid)
                    .execute(&mut *conn)
                    .await?;
                // Prepared, local transaction still open: nothing is visible yet.
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, sqlx::Error>(broker.records(&topic, Duration::from_millis(500)).len())
            },
        )
        .await
        .unwrap();
    assert_eq!(seen_before_commit, 0, "a prepared message is invisible");

    assert_eq!(
        final_status(&client, &gid).await,
        dtx::GlobalStatus::Succeeded
    );
    let records = broker.records(&topic, Duration::from_millis(800));
    assert_eq!(records.len(), 1, "exactly one record: {records:?}");
    let r = &records[0];
    assert_eq!(serde_json::from_slice::<Value>(&r.payload).unwrap(), order);
    assert_eq!(r.key.as_deref(), Some(gid.as_str()), "keyed by the gid");
    assert_eq!(r.header("dtx-gid"), Some(gid.as_str()));
    assert_eq!(r.header("dtx-branch-id"), Some("01"));
    assert_eq!(r.header("dtx-trans-type"), Some("msg"));
    assert_eq!(r.header("traceparent").map(str::len), Some(55));
    assert_eq!(
        points.count("points/action", &gid),
        1,
        "the HTTP step, once"
    );
    let total: i64 = sqlx::query_scalar("SELECT total FROM orders WHERE gid = ?")
        .bind(&gid)
        .fetch_one(&initiator.pool)
        .await
        .unwrap();
    assert_eq!(total, 1200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initiator_that_dies_before_submit_is_checked_back() {
    let Setup {
        broker,
        topic,
        coord,
        _db,
    } = Setup::new().await;
    let client = coord.client();
    let initiator = Initiator::start().await;
    let run = format!("{:08x}", fastrand::u32(..));
    let prepare = |gid: String| {
        Msg::new(gid.clone())
            .add_kafka(&topic, Some("k"), &json!({"gid": gid}))
            .unwrap()
            .query_prepared(&initiator.query_prepared)
            .timeout_to_fail(Duration::from_millis(300))
            .retry_interval(Duration::from_millis(50))
    };

    // Committed its local transaction, then died before submit: delivered.
    let committed = format!("c-{run}");
    prepare(committed.clone()).prepare(&client).await.unwrap();
    assert!(initiator.commit_order(&committed, 10).await.ran());
    // Its local transaction rolled back, then it died: failed, never delivered.
    let rolled_back = format!("r-{run}");
    prepare(rolled_back.clone()).prepare(&client).await.unwrap();
    let ctx = BranchContext::new(&rolled_back, TransType::Msg, "00", Op::Msg);
    let r = barrier::call(
        &initiator.pool,
        &ctx,
        async |_: &mut sqlx::SqliteConnection| Err::<(), _>("payment declined"),
    )
    .await;
    assert!(r.is_err());
    // Died before its local transaction: failed; the late local work is refused after.
    let never = format!("n-{run}");
    prepare(never.clone()).prepare(&client).await.unwrap();

    assert_eq!(
        final_status(&client, &committed).await,
        dtx::GlobalStatus::Succeeded
    );
    assert_eq!(
        final_status(&client, &rolled_back).await,
        dtx::GlobalStatus::Failed
    );
    assert_eq!(
        final_status(&client, &never).await,
        dtx::GlobalStatus::Failed
    );
    assert!(
        !initiator.commit_order(&never, 30).await.ran(),
        "a local transaction arriving after the check-back said 'rolled back' must not run"
    );

    let records = broker.records(&topic, Duration::from_millis(800));
    let gids: Vec<&str> = records.iter().filter_map(|r| r.header("dtx-gid")).collect();
    assert_eq!(
        gids,
        vec![committed.as_str()],
        "only the committed one: {records:?}"
    );
    assert_eq!(records[0].key.as_deref(), Some("k"));
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&initiator.pool)
        .await
        .unwrap();
    assert_eq!(orders, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_delays_delivery_and_loses_nothing() {
    let mut broker = Broker::start_own().await;
    let topic = topic();
    broker.create_topic(&topic).await;
    let db = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(
        &db.url,
        &[
            ("DTX_KAFKA_BROKERS", broker.brokers.as_str()),
            ("DTX_KAFKA_PROPERTIES", "message.timeout.ms=1000"),
        ],
    )
    .await;
    let client = coord.client();
    broker.stop();

    let gid = format!("outage-{:08x}", fastrand::u32(..));
    Msg::new(&gid)
        .add_kafka(&topic, None, &json!({"n": 1}))
        .unwrap()
        .retry_interval(Duration::from_millis(100))
        .submit(&client)
        .await
        .unwrap();
    // Publishing fails while the broker is away...
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "two failed publishes", || {
        let url = format!("{}/api/admin/transactions/{gid}", coord.url);
        let http = http.clone();
        async move {
            let d: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            let failed = d["attempts"]
                .as_array()?
                .iter()
                .filter(|a| a["outcome"] == "transient")
                .count();
            (failed >= 2).then_some(())
        }
    })
    .await;
    assert_eq!(
        client.query(&gid).await.unwrap().status,
        dtx::GlobalStatus::Submitted
    );
    // ...and succeeds once it is back (in-memory: the topic is made again).
    broker.start_again().await;
    broker.create_topic(&topic).await;
    assert_eq!(
        final_status(&client, &gid).await,
        dtx::GlobalStatus::Succeeded
    );
    let records = broker.records(&topic, Duration::from_millis(800));
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].header("dtx-gid"), Some(gid.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtm_clients_send_messages_to_kafka_and_bad_ones_are_refused() {
    let Setup {
        broker,
        topic,
        coord,
        _db,
    } = Setup::new().await;
    let initiator = Initiator::start().await;
    let http = reqwest::Client::new();
    let gid = format!("dtm-{:08x}", fastrand::u32(..));
    // DTM's Msg: prepare, then submit with the same body.
    let body = json!({
        "gid": gid, "trans_type": "msg",
        "steps": [{"action": format!("kafka://{topic}")}],
        "payloads": ["{\"amount\":30}"],
        "query_prepared": initiator.query_prepared,
    });
    for verb in ["prepare", "submit"] {
        let res = http
            .post(format!("{}/api/dtmsvr/{verb}", coord.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{verb}: {}", res.text().await.unwrap());
    }
    assert_eq!(
        final_status(&coord.client(), &gid).await,
        dtx::GlobalStatus::Succeeded
    );
    let records = broker.records(&topic, Duration::from_millis(800));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload, b"{\"amount\":30}");

    // Bad input: a prepared message without check-back, a bad topic, compensations.
    let bad = |body: Value, field: &'static str| {
        let http = http.clone();
        let url = format!("{}/api/v1/msgs", coord.url);
        async move {
            let res = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(res.status(), 400);
            let e: Value = res.json().await.unwrap();
            assert_eq!(e["field"], field, "{e}");
        }
    };
    bad(
        json!({"steps": [{"action": format!("kafka://{topic}")}], "prepare": true}),
        "query_prepared",
    )
    .await;
    bad(
        json!({"steps": [{"action": "kafka://no such topic"}]}),
        "steps[0].action",
    )
    .await;
    bad(json!({"steps": []}), "steps").await;

    // Without brokers configured, kafka:// steps are refused up front.
    let db2 = Backend::Sqlite.fresh().await;
    let plain = CoordinatorProc::start(&db2.url, &[]).await;
    let res = http
        .post(format!("{}/api/v1/msgs", plain.url))
        .json(&json!({"steps": [{"action": format!("kafka://{topic}")}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("DTX_KAFKA_BROKERS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtm_python_client_msg_reaches_kafka() {
    let Setup {
        broker,
        topic,
        coord,
        _db,
    } = Setup::new().await;
    let initiator = Initiator::start().await;
    let python = std::env::var("DTX_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/dtm/dtmcli_msg.py");
    let args = [
        coord.url.clone(),
        topic.clone(),
        initiator.query_prepared.clone(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args(args)
            .output()
    })
    .await
    .unwrap()
    .expect("run python3 (set DTX_TEST_PYTHON to another interpreter)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'dtmcli'"),
        "the DTM Python client is missing: pip install dtmcli requests (./scripts/test installs it)"
    );
    assert!(out.status.success(), "dtmcli msg failed:\n{stderr}");
    let gid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        final_status(&coord.client(), &gid).await,
        dtx::GlobalStatus::Succeeded
    );
    let records = broker.records(&topic, Duration::from_millis(800));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].header("dtx-gid"), Some(gid.as_str()));
    assert_eq!(
        serde_json::from_slice::<Value>(&records[0].payload).unwrap(),
        json!({"amount": 30})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_waits_its_time() {
    let Setup {
        broker,
        topic,
        coord,
        _db,
    } = Setup::new().await;
    let client = coord.client();
    let gid = format!("later-{:08x}", fastrand::u32(..));
    let started = std::time::Instant::now();
    Msg::new(&gid)
        .add_kafka(&topic, None, &json!({"remind": true}))
        .unwrap()
        .delay(Duration::from_millis(2000))
        .submit(&client)
        .await
        .unwrap();
    assert!(
        broker
            .records(&topic, Duration::from_millis(700))
            .is_empty(),
        "not before its time"
    );
    assert_eq!(
        final_status(&client, &gid).await,
        dtx::GlobalStatus::Succeeded
    );
    assert!(started.elapsed() >= Duration::from_millis(2000));
    assert_eq!(broker.records(&topic, Duration::from_millis(500)).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_do_and_submit_submits_without_running_the_work_again() {
    let Setup {
        broker,
        topic,
        coord,
        _db,
    } = Setup::new().await;
    let client = coord.client();
    let initiator = Initiator::start().await;
    let gid = format!("retry-{:08x}", fastrand::u32(..));
    // Long timeout: only a submit can deliver within this test.
    let msg = Msg::new(&gid)
        .add_kafka(&topic, None, &json!({"n": 1}))
        .unwrap()
        .query_prepared(&initiator.query_prepared)
        .timeout_to_fail(Duration::from_secs(600));
    // The first attempt committed its local work and died before submitting.
    msg.prepare(&client).await.unwrap();
    assert!(initiator.commit_order(&gid, 10).await.ran());
    // The retry finds the work done: it does not run it again, and submits.
    let r = msg
        .do_and_submit(
            &client,
            &initiator.pool,
            async |conn: &mut sqlx::SqliteConnection| {
                sqlx::query("INSERT INTO orders (gid, total) VALUES ('dup', 1)")
                    .execute(&mut *conn)
                    .await
                    .map(|_| ())
            },
        )
        .await;
    assert!(matches!(r, Err(dtx::MsgError::AlreadyDone)), "{r:?}");
    assert_eq!(
        final_status(&client, &gid).await,
        dtx::GlobalStatus::Succeeded
    );
    assert_eq!(broker.records(&topic, Duration::from_millis(500)).len(), 1);
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&initiator.pool)
        .await
        .unwrap();
    assert_eq!(orders, 1, "the work ran once");
}
