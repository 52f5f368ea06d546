//! Backpressure: no more calls in flight to one participant than its limit, however many
//! transactions want it at once (as after an outage, when everything retries together).

use dtx::api::{SagaStep, SubmitSaga, TxOptions};
use dtx_tests::{Backend, Behaviour, CoordinatorProc, Participant, query_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_one_participant_are_limited() {
    let db = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(&db.url, &[("DTX_CALLS_PER_TARGET", "2")]).await;
    let p = Participant::start().await;
    p.set("slow/action", Behaviour::Slow(200));
    let client = coord.client();
    let mut gids = Vec::new();
    for _ in 0..10 {
        let saga = SubmitSaga {
            steps: vec![SagaStep {
                action: p.url("slow/action"),
                ..Default::default()
            }],
            options: TxOptions {
                request_timeout_ms: Some(5_000),
                ..Default::default()
            },
            ..Default::default()
        };
        gids.push(client.submit_saga(&saga).await.unwrap().gid);
    }
    for gid in &gids {
        query_until(&client, gid, "every saga to finish", |t| {
            t.status.is_final()
        })
        .await;
    }
    let peak = p.max_concurrency("slow/action");
    assert_eq!(peak, 2, "at most 2 calls at once, and the limit was used");
    assert_eq!(
        p.calls().len(),
        10,
        "each called once: waiting for a turn is not a failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_can_cap_its_own_fan_out() {
    let db = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(&db.url, &[]).await;
    let p = Participant::start().await;
    p.set("wide/action", Behaviour::Slow(150));
    // Eight independent steps, at most three called at once.
    let saga = SubmitSaga {
        steps: (0..8)
            .map(|_| SagaStep {
                action: p.url("wide/action"),
                ..Default::default()
            })
            .collect(),
        concurrent: true,
        options: TxOptions {
            max_parallel_calls: Some(3),
            ..Default::default()
        },
        wait_result: true,
        ..Default::default()
    };
    let done = coord.client().submit_saga(&saga).await.unwrap();
    assert_eq!(done.status, dtx::GlobalStatus::Succeeded);
    assert_eq!(p.max_concurrency("wide/action"), 3);
    assert_eq!(p.calls().len(), 8);
}
