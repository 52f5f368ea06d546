//! Graceful shutdown: on SIGTERM a coordinator stops accepting and claiming, lets its
//! in-flight transactions finish or hands them back, releases its leases and exits within
//! its shutdown timeout; another coordinator takes over at once, not when a lease expires.

use std::time::Duration;

use dtx::GlobalStatus;
use dtx::api::{SagaStep, SubmitSaga, TxOptions};
use dtx_tests::{Backend, Behaviour, CoordinatorProc, Participant, eventually, query_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_in_flight_work_to_another_coordinator() {
    let db = Backend::Postgres.fresh().await;
    // Long leases: if the work were not handed back, the second coordinator would wait 60 s.
    let env = [
        ("DTX_LEASE_MS", "60000"),
        ("DTX_SHUTDOWN_TIMEOUT_MS", "2000"),
    ];
    let mut first = CoordinatorProc::start(&db.url, &env).await;
    let p = Participant::start().await;
    // Step 2 answers after 5 s the first time: longer than the shutdown timeout.
    p.set(
        "b/action",
        Behaviour::SlowTimes {
            times: 1,
            ms: 5_000,
        },
    );
    let step = |n: &str| SagaStep {
        action: p.url(&format!("{n}/action")),
        compensate: Some(p.url(&format!("{n}/compensate"))),
        ..Default::default()
    };
    let saga = SubmitSaga {
        steps: vec![step("a"), step("b"), step("c")],
        options: TxOptions {
            request_timeout_ms: Some(10_000),
            retry_interval_ms: Some(50),
            ..Default::default()
        },
        ..Default::default()
    };
    let gid = first.client().submit_saga(&saga).await.unwrap().gid;
    let p2 = p.clone();
    let g = gid.clone();
    eventually(
        Duration::from_secs(10),
        "step 2 to be in flight",
        move || {
            let n = p2.count("b/action", &g);
            async move { (n > 0).then_some(()) }
        },
    )
    .await;

    let took = first.terminate(Duration::from_secs(6));
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM; the timeout is 2 s"
    );

    let second = CoordinatorProc::start(&db.url, &[("DTX_LEASE_MS", "60000")]).await;
    let started = std::time::Instant::now();
    let client = second.client();
    let done = query_until(&client, &gid, "the handed-back saga to finish", |t| {
        t.status.is_final()
    })
    .await;
    assert_eq!(done.status, GlobalStatus::Succeeded);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "taken over at once, not after the 60 s lease"
    );
    assert_eq!(p.count("c/action", &gid), 1);
    assert!(p.count("b/action", &gid) <= 2);
}
