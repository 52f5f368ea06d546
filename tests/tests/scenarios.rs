//! Black-box scenarios of DESIGN §3 (saga, TCC) against a real coordinator process, run on
//! every store: each scenario is one async function, instantiated once per backend.

use std::time::Duration;

use dtx::api::{
    Finish, PrepareTcc, RegisterBranch, SagaStep, SubmitSaga, TransactionView, TxOptions,
};
use dtx::{GlobalStatus, OpStatus};
use dtx_tests::{
    Backend, Behaviour, CoordinatorProc, Database, Participant, backend::postgres_url, eventually,
    query_until,
};
use serde_json::json;

struct World {
    db: Database,
    coord: CoordinatorProc,
    p: Participant,
}

async fn world(backend: Backend, env: &[(&str, &str)]) -> World {
    let db = backend.fresh().await;
    let coord = CoordinatorProc::start(&db.url, env).await;
    let p = Participant::start().await;
    World { db, coord, p }
}

/// Fast retries so that scenarios finish in seconds.
fn quick() -> TxOptions {
    TxOptions {
        retry_interval_ms: Some(50),
        retry_cap_ms: Some(200),
        request_timeout_ms: Some(2_000),
        ..Default::default()
    }
}

fn step(w: &World, name: &str) -> SagaStep {
    SagaStep {
        action: w.p.url(&format!("{name}/action")),
        compensate: Some(w.p.url(&format!("{name}/compensate"))),
        payload: Some(json!({ "step": name })),
        ..Default::default()
    }
}

async fn final_state(w: &World, gid: &str) -> TransactionView {
    query_until(&w.coord.client(), gid, "a final state", |t| {
        t.status.is_final()
    })
    .await
}

async fn saga_success(backend: Backend) {
    let w = world(backend, &[]).await;
    let saga = SubmitSaga {
        steps: vec![step(&w, "order"), step(&w, "stock")],
        options: quick(),
        wait_result: true,
        ..Default::default()
    };
    let accepted = w.coord.client().submit_saga(&saga).await.unwrap();
    assert_eq!(
        accepted.status,
        GlobalStatus::Succeeded,
        "wait_result returns the final status"
    );
    let gid = &accepted.gid;
    assert_eq!(w.p.sequence(gid), ["order/action", "stock/action"]);
    let call = &w.p.calls_to("order/action", gid)[0];
    assert_eq!(
        (
            call.method.as_str(),
            call.op.as_str(),
            call.branch_id.as_str()
        ),
        ("POST", "action", "01")
    );
    assert_eq!(
        (call.trans_type.as_str(), call.header_gid.as_deref()),
        ("saga", Some(gid.as_str()))
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&call.body).unwrap(),
        json!({"step": "order"})
    );
    let tx = w.coord.client().query(gid).await.unwrap();
    assert!(tx.finished_at.is_some());
    let actions: Vec<_> = tx
        .branches
        .iter()
        .filter(|b| b.op == dtx::Op::Action)
        .collect();
    assert!(
        actions
            .iter()
            .all(|b| b.status == OpStatus::Succeeded && b.attempts == 1),
        "{actions:?}"
    );
}

async fn saga_failure_compensates_in_reverse(backend: Backend) {
    let w = world(backend, &[]).await;
    w.p.set("pay/action", Behaviour::Status(409));
    let saga = SubmitSaga {
        steps: vec![
            step(&w, "order"),
            step(&w, "stock"),
            step(&w, "pay"),
            step(&w, "ship"),
        ],
        options: quick(),
        ..Default::default()
    };
    let gid = w.coord.client().submit_saga(&saga).await.unwrap().gid;
    let tx = final_state(&w, &gid).await;
    assert_eq!(tx.status, GlobalStatus::Failed);
    assert_eq!(
        w.p.sequence(&gid),
        [
            "order/action",
            "stock/action",
            "pay/action",
            "pay/compensate",
            "stock/compensate",
            "order/compensate"
        ],
        "the failed step is compensated too, in reverse, and the step after it never runs"
    );
    assert_eq!(w.p.count("ship/action", &gid), 0);
    let ops: Vec<_> = tx
        .branches
        .iter()
        .map(|b| (b.branch_id.as_str(), b.op.as_str(), b.status, b.attempts))
        .collect();
    assert_eq!(
        ops,
        [
            ("01", "action", OpStatus::Succeeded, 1),
            ("01", "compensate", OpStatus::Succeeded, 1),
            ("02", "action", OpStatus::Succeeded, 1),
            ("02", "compensate", OpStatus::Succeeded, 1),
            ("03", "action", OpStatus::Failed, 1),
            ("03", "compensate", OpStatus::Succeeded, 1),
            ("04", "action", OpStatus::Pending, 0),
            ("04", "compensate", OpStatus::Pending, 0),
        ]
    );
    // The compensations that succeeded at their first call got no rows: the failed saga
    // implies them.
    let stored = w.db.branch_rows(&gid).await;
    assert!(stored.iter().all(|r| r.1 == "action"), "{stored:?}");
    assert!(
        tx.rollback_reason
            .as_deref()
            .unwrap_or("")
            .contains("branch 03 action answered FAILURE"),
        "{tx:?}"
    );
}

async fn transient_errors_and_timeouts_are_retried(backend: Backend) {
    let w = world(backend, &[]).await;
    w.p.set(
        "order/action",
        Behaviour::FailTimes {
            times: 2,
            status: 503,
        },
    );
    // Slower than the request timeout once: the coordinator gives up and calls again.
    w.p.set(
        "stock/action",
        Behaviour::SlowTimes {
            times: 1,
            ms: 1_500,
        },
    );
    let mut options = quick();
    options.request_timeout_ms = Some(500);
    let saga = SubmitSaga {
        steps: vec![step(&w, "order"), step(&w, "stock"), step(&w, "ship")],
        options,
        ..Default::default()
    };
    let gid = w.coord.client().submit_saga(&saga).await.unwrap().gid;
    let tx = final_state(&w, &gid).await;
    assert_eq!(tx.status, GlobalStatus::Succeeded);
    assert_eq!(w.p.count("order/action", &gid), 3);
    assert_eq!(w.p.count("stock/action", &gid), 2);
    assert_eq!(w.p.count("ship/action", &gid), 1);
    assert_eq!(
        w.p.count("order/compensate", &gid) + w.p.count("stock/compensate", &gid),
        0
    );
    let actions: Vec<_> = tx
        .branches
        .iter()
        .filter(|b| b.op == dtx::Op::Action)
        .map(|b| (b.branch_id.as_str(), b.status, b.attempts))
        .collect();
    assert_eq!(
        actions,
        [
            ("01", OpStatus::Succeeded, 3),
            ("02", OpStatus::Succeeded, 2),
            ("03", OpStatus::Succeeded, 1)
        ]
    );
    // The retried actions' rows were written; the step that succeeded at its first call
    // was not (its row is still as submitted): the succeeded saga implies it.
    let stored = w.db.branch_rows(&gid).await;
    let row = |id: &str| {
        stored
            .iter()
            .find(|r| r.0 == id && r.1 == "action")
            .map(|r| (r.2.as_str(), r.3))
    };
    assert_eq!(row("01"), Some(("succeeded", 3)), "{stored:?}");
    assert_eq!(row("02"), Some(("succeeded", 2)), "{stored:?}");
    assert_eq!(row("03"), Some(("pending", 0)), "{stored:?}");
}

async fn saga_timeout_to_fail_compensates(backend: Backend) {
    let w = world(backend, &[]).await;
    w.p.set("stock/action", Behaviour::Status(503));
    let options = TxOptions {
        timeout_to_fail_ms: Some(1_000),
        ..quick()
    };
    let saga = SubmitSaga {
        steps: vec![step(&w, "order"), step(&w, "stock")],
        options,
        ..Default::default()
    };
    let gid = w.coord.client().submit_saga(&saga).await.unwrap().gid;
    let tx = final_state(&w, &gid).await;
    assert_eq!(tx.status, GlobalStatus::Failed);
    assert!(
        tx.rollback_reason
            .unwrap_or_default()
            .contains("timeout_to_fail")
    );
    assert!(
        w.p.count("stock/action", &gid) >= 2,
        "retried until the timeout"
    );
    assert_eq!(
        w.p.count("stock/compensate", &gid),
        1,
        "step 2 may have run: compensated"
    );
    assert_eq!(w.p.count("order/compensate", &gid), 1);
}

async fn concurrent_saga_respects_dependencies(backend: Backend) {
    let w = world(backend, &[]).await;
    for s in ["a", "b", "c", "d"] {
        w.p.set(&format!("{s}/action"), Behaviour::Slow(300));
    }
    let mut steps = vec![step(&w, "a"), step(&w, "b"), step(&w, "c"), step(&w, "d")];
    steps[2].after = vec![0, 1];
    steps[3].after = vec![2];
    let saga = SubmitSaga {
        steps,
        concurrent: true,
        options: quick(),
        wait_result: true,
        ..Default::default()
    };
    let accepted = w.coord.client().submit_saga(&saga).await.unwrap();
    assert_eq!(accepted.status, GlobalStatus::Succeeded);
    let one = |p: &str| w.p.calls_to(p, &accepted.gid).remove(0);
    let (a, b, c, d) = (
        one("a/action"),
        one("b/action"),
        one("c/action"),
        one("d/action"),
    );
    assert!(
        b.started < a.finished.unwrap() && a.started < b.finished.unwrap(),
        "a and b ran together"
    );
    assert!(
        c.started >= a.finished.unwrap() && c.started >= b.finished.unwrap(),
        "c waited for a and b"
    );
    assert!(d.started >= c.finished.unwrap(), "d waited for c");
}

async fn concurrent_saga_compensates_in_reverse_dependency_order(backend: Backend) {
    let w = world(backend, &[]).await;
    w.p.set("d/action", Behaviour::Status(409));
    let mut steps = vec![step(&w, "a"), step(&w, "b"), step(&w, "c"), step(&w, "d")];
    steps[2].after = vec![0];
    steps[3].after = vec![2];
    let saga = SubmitSaga {
        steps,
        concurrent: true,
        options: quick(),
        ..Default::default()
    };
    let gid = w.coord.client().submit_saga(&saga).await.unwrap().gid;
    assert_eq!(final_state(&w, &gid).await.status, GlobalStatus::Failed);
    let at = |p: &str| {
        w.p.calls_to(p, &gid)
            .first()
            .map(|c| c.started)
            .unwrap_or_else(|| panic!("{p} not called"))
    };
    assert!(at("d/compensate") < at("c/compensate"));
    assert!(
        at("c/compensate") < at("a/compensate"),
        "a is undone only after c, which waited for it"
    );
    assert_eq!(w.p.count("b/compensate", &gid), 1);
}

async fn register(w: &World, gid: &str, branch: &str, name: &str) {
    let r = RegisterBranch {
        branch_id: branch.into(),
        confirm: w.p.url(&format!("{name}/confirm")),
        cancel: w.p.url(&format!("{name}/cancel")),
        payload: Some(json!({ "account": name })),
        ..Default::default()
    };
    w.coord.client().register_branch(gid, &r).await.unwrap();
}

/// The initiator's part of TCC: register each branch, then call its try.
async fn tcc_phase_one(w: &World, gid: &str, names: &[&str]) -> bool {
    let http = reqwest::Client::new();
    for (i, name) in names.iter().enumerate() {
        // Ids that sort against registration order: the order must come from registration.
        let branch = format!("b{}", 9 - i);
        register(w, gid, &branch, name).await;
        let res = http
            .post(w.p.url(&format!("{name}/try")))
            .query(&[
                ("gid", gid),
                ("trans_type", "tcc"),
                ("branch_id", &branch),
                ("op", "try"),
            ])
            .json(&json!({ "account": name }))
            .send()
            .await
            .unwrap();
        if !res.status().is_success() {
            return false;
        }
    }
    true
}

async fn tcc_success(backend: Backend) {
    let w = world(backend, &[]).await;
    let client = w.coord.client();
    let gid = client
        .prepare_tcc(&PrepareTcc {
            options: quick(),
            ..Default::default()
        })
        .await
        .unwrap()
        .gid;
    assert!(tcc_phase_one(&w, &gid, &["alice", "bob"]).await);
    let done = client
        .submit(
            &gid,
            &Finish {
                wait_result: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(done.status, GlobalStatus::Succeeded);
    assert_eq!(w.p.count("alice/confirm", &gid), 1);
    assert_eq!(w.p.count("bob/confirm", &gid), 1);
    assert_eq!(
        w.p.count("alice/cancel", &gid) + w.p.count("bob/cancel", &gid),
        0
    );
    let body = &w.p.calls_to("bob/confirm", &gid)[0].body;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(body).unwrap(),
        json!({"account": "bob"})
    );
    // Registration is refused once the transaction left `prepared`.
    let late = RegisterBranch {
        branch_id: "03".into(),
        confirm: w.p.url("x/confirm"),
        cancel: w.p.url("x/cancel"),
        ..Default::default()
    };
    assert_eq!(
        client
            .register_branch(&gid, &late)
            .await
            .unwrap_err()
            .status(),
        Some(409)
    );
}

async fn tcc_try_failure_cancels_every_branch(backend: Backend) {
    let w = world(backend, &[]).await;
    w.p.set("carol/try", Behaviour::Status(409));
    let client = w.coord.client();
    let gid = client
        .prepare_tcc(&PrepareTcc {
            options: quick(),
            ..Default::default()
        })
        .await
        .unwrap()
        .gid;
    assert!(!tcc_phase_one(&w, &gid, &["alice", "bob", "carol"]).await);
    let finish = Finish {
        wait_result: true,
        reason: Some("carol refused".into()),
    };
    assert_eq!(
        client.abort(&gid, &finish).await.unwrap().status,
        GlobalStatus::Failed
    );
    let cancels: Vec<String> =
        w.p.sequence(&gid)
            .into_iter()
            .filter(|p| p.ends_with("/cancel"))
            .collect();
    assert_eq!(
        cancels,
        ["carol/cancel", "bob/cancel", "alice/cancel"],
        "reverse registration order"
    );
    assert!(w.p.sequence(&gid).iter().all(|p| !p.ends_with("/confirm")));
    let tx = client.query(&gid).await.unwrap();
    assert_eq!(tx.rollback_reason.as_deref(), Some("carol refused"));
    // A submit after the abort is refused; a second abort is idempotent.
    assert_eq!(
        client
            .submit(&gid, &Finish::default())
            .await
            .unwrap_err()
            .status(),
        Some(409)
    );
    assert_eq!(
        client.abort(&gid, &Finish::default()).await.unwrap().status,
        GlobalStatus::Failed
    );
}

async fn tcc_initiator_vanishes(backend: Backend) {
    let w = world(backend, &[]).await;
    let client = w.coord.client();
    let options = TxOptions {
        timeout_to_fail_ms: Some(1_000),
        ..quick()
    };
    let gid = client
        .prepare_tcc(&PrepareTcc {
            options,
            ..Default::default()
        })
        .await
        .unwrap()
        .gid;
    assert!(tcc_phase_one(&w, &gid, &["alice", "bob"]).await);
    // ... and the initiator never calls submit or abort.
    let tx = final_state(&w, &gid).await;
    assert_eq!(tx.status, GlobalStatus::Failed);
    assert_eq!(w.p.count("bob/cancel", &gid), 1);
    assert_eq!(w.p.count("alice/cancel", &gid), 1);
    assert!(
        tx.rollback_reason
            .unwrap_or_default()
            .contains("timeout_to_fail")
    );
}

async fn duplicate_submit_is_idempotent(backend: Backend) {
    let w = world(backend, &[]).await;
    let client = w.coord.client();
    let saga = SubmitSaga {
        gid: Some("dup-saga-1".into()),
        steps: vec![step(&w, "order")],
        options: quick(),
        wait_result: true,
        ..Default::default()
    };
    let first = client.submit_saga(&saga).await.unwrap();
    let again = client.submit_saga(&saga).await.unwrap();
    assert_eq!(
        (first.status, again.status),
        (GlobalStatus::Succeeded, GlobalStatus::Succeeded)
    );
    assert_eq!(
        w.p.count("order/action", "dup-saga-1"),
        1,
        "the duplicate ran nothing"
    );
    // The same for TCC prepare and submit.
    let prep = PrepareTcc {
        gid: Some("dup-tcc-1".into()),
        options: quick(),
    };
    client.prepare_tcc(&prep).await.unwrap();
    client.prepare_tcc(&prep).await.unwrap();
    assert!(tcc_phase_one(&w, "dup-tcc-1", &["alice"]).await);
    let wait = Finish {
        wait_result: true,
        ..Default::default()
    };
    client.submit("dup-tcc-1", &wait).await.unwrap();
    assert_eq!(
        client.submit("dup-tcc-1", &wait).await.unwrap().status,
        GlobalStatus::Succeeded
    );
    assert_eq!(w.p.count("alice/confirm", "dup-tcc-1"), 1);
}

async fn coordinator_restart_resumes_from_the_database(backend: Backend) {
    // Short leases so that the restarted process may take over soon.
    let mut w = world(backend, &[("DTX_LEASE_MS", "1000")]).await;
    w.p.set(
        "stock/action",
        Behaviour::SlowTimes {
            times: 1,
            ms: 1_500,
        },
    );
    let saga = SubmitSaga {
        steps: vec![step(&w, "order"), step(&w, "stock"), step(&w, "pay")],
        options: quick(),
        ..Default::default()
    };
    let gid = w.coord.client().submit_saga(&saga).await.unwrap().gid;
    // Kill the coordinator while step 2's call is in flight.
    let p = w.p.clone();
    let g = gid.clone();
    eventually(Duration::from_secs(10), "step 2 to be called", move || {
        let n = p.count("stock/action", &g);
        async move { (n > 0).then_some(()) }
    })
    .await;
    w.coord.kill();
    assert_eq!(w.p.count("pay/action", &gid), 0);
    w.coord.restart().await;
    let tx = final_state(&w, &gid).await;
    assert_eq!(tx.status, GlobalStatus::Succeeded);
    // Step 1's success may ride with the next write (forward progress is not written on
    // its own), so the new owner may call it once more; the barrier makes that a no-op.
    let step1 = w.p.count("order/action", &gid);
    assert!((1..=2).contains(&step1), "step 1 called {step1} times");
    assert_eq!(
        w.p.count("stock/action", &gid),
        2,
        "step 2's outcome was unknown: called again"
    );
    assert_eq!(w.p.count("pay/action", &gid), 1);
}

async fn spent_retry_budget_needs_attention(backend: Backend) {
    let w = world(backend, &[]).await;
    w.p.set("stock/action", Behaviour::Status(503));
    let mut s2 = step(&w, "stock");
    s2.retry_limit = Some(3);
    let saga = SubmitSaga {
        steps: vec![step(&w, "order"), s2],
        options: quick(),
        ..Default::default()
    };
    let client = w.coord.client();
    let gid = client.submit_saga(&saga).await.unwrap().gid;
    let tx = query_until(&client, &gid, "needs_attention", |t| {
        t.needs_attention.is_some()
    })
    .await;
    assert_eq!(
        tx.status,
        GlobalStatus::Submitted,
        "parked, not silently failed"
    );
    let reason = tx.needs_attention.unwrap();
    assert!(
        reason.contains("retry budget spent") && reason.contains("HTTP 503"),
        "{reason}"
    );
    assert!(
        tx.next_attempt_at.is_none(),
        "no automatic retry is scheduled"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        w.p.count("stock/action", &gid),
        3,
        "exactly the budget, then nothing more"
    );
    let listed: serde_json::Value = reqwest::get(format!(
        "{}/api/v1/transactions?needs_attention=true",
        w.coord.url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(listed["transactions"][0]["gid"], gid.as_str());
}

/// The participant HTTP contract at its edges (DESIGN §4): a target URL's own query is kept
/// and the coordinator's parameters are added to it; a redirect is an answer (transient),
/// never followed, and its status and body go into the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_calls_keep_the_target_query_and_do_not_follow_redirects() {
    let w = world(Backend::Sqlite, &[]).await;
    w.p.set("moved/action", Behaviour::Status(307));
    let mut with_query = step(&w, "order");
    with_query.action = format!("{}?tenant=7#ignored", w.p.url("order/action"));
    let mut moved = step(&w, "moved");
    moved.retry_limit = Some(2);
    let saga = SubmitSaga {
        steps: vec![with_query, moved],
        options: quick(),
        ..Default::default()
    };
    let client = w.coord.client();
    let gid = client.submit_saga(&saga).await.unwrap().gid;
    let tx = query_until(&client, &gid, "needs_attention", |t| {
        t.needs_attention.is_some()
    })
    .await;
    let call = &w.p.calls_to("order/action", &gid)[0];
    assert_eq!(
        (
            call.gid.as_str(),
            call.branch_id.as_str(),
            call.op.as_str(),
            call.trans_type.as_str()
        ),
        (gid.as_str(), "01", "action", "saga"),
        "the coordinator's parameters follow the target's own query"
    );
    assert_eq!(
        w.p.count("moved/action", &gid),
        2,
        "a redirect is retried as a transient answer, within the op's budget"
    );
    assert_eq!(
        w.p.calls().len(),
        3,
        "nothing else was called: the redirect (to /redirected/action) was not followed"
    );
    let reason = tx.needs_attention.unwrap();
    assert!(
        reason.contains("HTTP 307") && reason.contains("FAILURE"),
        "the status and the start of the body are kept: {reason}"
    );
}

/// The coordinator keeps its PostgreSQL write connections outside sqlx's pool (no check
/// round trip per write). Connections the server has closed while they sat idle (a
/// restart, an operator's `pg_terminate_backend`, an idle timeout) must not cost a write:
/// the next submit after they were cut succeeds at once, and so does the one after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_closed_by_the_server_cost_no_write() {
    let w = world(Backend::Postgres, &[]).await;
    let client = w.coord.client();
    let saga = SubmitSaga {
        steps: vec![step(&w, "order"), step(&w, "stock")],
        options: quick(),
        wait_result: true,
        ..Default::default()
    };
    let first = client.submit_saga(&saga).await.unwrap();
    assert_eq!(first.status, GlobalStatus::Succeeded);

    // Idle long enough to be checked before use, then cut by the server.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let name = w.db.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&postgres_url())
        .await
        .unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(
        cut.len() >= 2,
        "the coordinator's connections were found and cut: {cut:?}"
    );

    for round in 0..2 {
        let next = client
            .submit_saga(&saga)
            .await
            .unwrap_or_else(|e| panic!("submit {round} after the connections were cut: {e}"));
        assert_eq!(next.status, GlobalStatus::Succeeded, "submit {round}");
        assert_eq!(
            w.p.sequence(&next.gid),
            ["order/action", "stock/action"],
            "submit {round}"
        );
    }
}

/// Many sagas at once, so that their writes share commits (inserts and saves of different
/// transactions in one batch, and the same gid submitted twice at once): every one ends as
/// it should, each participant call happens once, and the stored rows say so.
async fn many_sagas_at_once_share_commits(backend: Backend) {
    let w = world(backend, &[]).await;
    w.p.set("refuse/action", Behaviour::Status(409));
    let client = w.coord.client();
    let run = format!("batch{:08x}", fastrand::u32(..));
    let mut submits = Vec::new();
    for i in 0..120usize {
        // Every third one is refused at step 2 and compensated.
        let second = if i.is_multiple_of(3) {
            "refuse"
        } else {
            "ship"
        };
        let saga = SubmitSaga {
            gid: Some(format!("{run}-{i}")),
            steps: vec![step(&w, "order"), step(&w, second)],
            options: quick(),
            wait_result: true,
            ..Default::default()
        };
        // The first ten are submitted twice at once.
        for _ in 0..if i < 10 { 2 } else { 1 } {
            let (client, saga) = (client.clone(), saga.clone());
            submits.push(tokio::spawn(async move {
                client.submit_saga(&saga).await.unwrap()
            }));
        }
    }
    for s in submits {
        let accepted = s.await.unwrap();
        let i: usize = accepted.gid.rsplit('-').next().unwrap().parse().unwrap();
        let want = if i.is_multiple_of(3) {
            GlobalStatus::Failed
        } else {
            GlobalStatus::Succeeded
        };
        assert_eq!(accepted.status, want, "{}", accepted.gid);
    }
    for i in 0..120usize {
        let gid = format!("{run}-{i}");
        let expected: &[&str] = if i.is_multiple_of(3) {
            &[
                "order/action",
                "refuse/action",
                "refuse/compensate",
                "order/compensate",
            ]
        } else {
            &["order/action", "ship/action"]
        };
        assert_eq!(w.p.sequence(&gid), expected, "{gid}");
        let tx = client.query(&gid).await.unwrap();
        assert!(tx.finished_at.is_some(), "{gid}");
        let succeeded = tx
            .branches
            .iter()
            .filter(|b| b.status == OpStatus::Succeeded)
            .count();
        let failed = tx
            .branches
            .iter()
            .filter(|b| b.status == OpStatus::Failed)
            .count();
        assert_eq!(
            (succeeded, failed),
            if i.is_multiple_of(3) { (3, 1) } else { (2, 0) },
            "{gid}: {:?}",
            tx.branches
        );
    }
}

macro_rules! on_every_store {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(dtx_tests::Backend::Sqlite).await }) +
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(dtx_tests::Backend::Postgres).await }) +
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(dtx_tests::Backend::Mysql).await }) +
        }
    };
}

on_every_store!(
    saga_success,
    saga_failure_compensates_in_reverse,
    transient_errors_and_timeouts_are_retried,
    saga_timeout_to_fail_compensates,
    concurrent_saga_respects_dependencies,
    concurrent_saga_compensates_in_reverse_dependency_order,
    tcc_success,
    tcc_try_failure_cancels_every_branch,
    tcc_initiator_vanishes,
    duplicate_submit_is_idempotent,
    coordinator_restart_resumes_from_the_database,
    spent_retry_budget_needs_attention,
    many_sagas_at_once_share_commits,
);
