//! The examples, run end to end, checked by the rows they leave.

use dtx::GlobalStatus;
use dtx_tests::Backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcc_bank_transfer_moves_30_and_refuses_500() {
    let (a, b) = (
        Backend::Postgres.fresh().await,
        Backend::Postgres.fresh().await,
    );
    let settings = tcc_bank_transfer::Settings {
        bank_a_db: a.url.clone(),
        bank_b_db: b.url.clone(),
        coordinator: None,
    };
    let report = tcc_bank_transfer::run(settings).await.unwrap();
    assert_eq!(report.first, GlobalStatus::Succeeded);
    assert!(
        report
            .second
            .starts_with("aborted: branch 01 refused its try"),
        "{}",
        report.second
    );
    assert_eq!(
        report.alice,
        (70, 0),
        "alice paid 30 once; the refused transfer left nothing frozen"
    );
    assert_eq!(report.bob, (30, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_order_compensates_a_refused_payment() {
    let dir = std::env::temp_dir().join(format!("saga-order-test-{}", std::process::id()));
    let report = saga_order::run(&dir, None).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (report.first, report.second),
        (GlobalStatus::Succeeded, GlobalStatus::Failed)
    );
    let statuses: Vec<&str> = report.orders.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(statuses, ["created", "cancelled"]);
    assert_eq!(report.stock, 8, "the refused order's stock was put back");
    assert_eq!(report.wallet, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xa_transfer_commits_on_both_databases_and_rolls_back_a_refusal() {
    let (_pg_pool, pg) = dtx_tests::backend::fresh_pg_pool().await;
    let (_my_pool, my) = dtx_tests::backend::fresh_mysql_pool().await;
    let report = xa_transfer::run(&pg.url, &my.url, None).await.unwrap();
    assert_eq!(
        (report.first, report.second),
        (GlobalStatus::Succeeded, GlobalStatus::Failed)
    );
    assert_eq!((report.alice, report.bob), (70, 30));
    assert_eq!(
        report.left_prepared, 0,
        "no prepared transaction outlives its global transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_kafka_publishes_committed_orders_only_and_projects_them_once() {
    let broker = dtx_tests::Broker::start().await;
    let dir = std::env::temp_dir().join(format!("msg-kafka-test-{}", std::process::id()));
    let report = msg_kafka::run(msg_kafka::Settings {
        data_dir: dir.clone(),
        brokers: Some(broker.brokers.clone()),
        coordinator: None,
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let statuses: Vec<&str> = report.orders.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(statuses, ["succeeded", "succeeded", "failed"]);
    assert_eq!(
        report.applied, 2,
        "the aborted order's message was never seen"
    );
    assert_eq!(
        report.totals,
        vec![("ann".to_string(), 40), ("bob".to_string(), 25)]
    );
    let on_topic = broker.records(&report.topic, std::time::Duration::from_millis(800));
    assert_eq!(on_topic.len(), 2);
}
