//! The operator's tools: find a stuck transaction, retry it once the participant is fixed,
//! force one to roll back — through the admin API and the CLI, every action audited.

use std::process::Command;
use std::time::Duration;

use dtx::GlobalStatus;
use dtx::api::{SagaStep, SubmitSaga, TxOptions};
use dtx_tests::{Backend, Behaviour, CoordinatorProc, Participant, eventually, query_until};
use serde_json::{Value, json};

fn saga(p: &Participant, limit: u32) -> SubmitSaga {
    let step = |n: &str| SagaStep {
        action: p.url(&format!("{n}/action")),
        compensate: Some(p.url(&format!("{n}/compensate"))),
        ..Default::default()
    };
    SubmitSaga {
        steps: vec![step("a"), step("b")],
        options: TxOptions {
            retry_limit: Some(limit),
            retry_interval_ms: Some(20),
            retry_cap_ms: Some(50),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Runs `dtx-coordinator tx ...` against `url`; returns (success, stdout).
fn cli(url: &str, token: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(dtx_tests::coordinator::binary());
    cmd.arg("tx")
        .args(args)
        .env("DTX_URL", url)
        .env_remove("DTX_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("DTX_ADMIN_TOKEN", t);
    }
    let out = cmd.output().expect("run the CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

async fn a_stuck_saga_is_found_retried_and_audited_from_the_cli(backend: Backend) {
    let db = backend.fresh().await;
    let coord = CoordinatorProc::start(&db.url, &[]).await;
    let p = Participant::start().await;
    p.set("b/action", Behaviour::Status(503));
    let client = coord.client();
    let gid = client.submit_saga(&saga(&p, 2)).await.unwrap().gid;
    query_until(&client, &gid, "needs_attention", |t| {
        t.needs_attention.is_some()
    })
    .await;

    let (ok, out) = cli(&coord.url, None, &["list", "--stuck"]);
    assert!(ok && out.contains(&gid), "{out}");

    // The participant is fixed; the operator retries.
    p.set("b/action", Behaviour::Ok);
    let (ok, out) = cli(
        &coord.url,
        None,
        &["retry", &gid, "--reason", "payment service redeployed"],
    );
    assert!(ok, "{out}");
    let done = query_until(&client, &gid, "success after the retry", |t| {
        t.status.is_final()
    })
    .await;
    assert_eq!(done.status, GlobalStatus::Succeeded);
    assert!(done.needs_attention.is_none());
    assert_eq!(
        p.count("b/action", &gid),
        3,
        "2 within the budget, 1 after the retry"
    );

    let (ok, out) = cli(&coord.url, None, &["show", &gid]);
    assert!(ok, "{out}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["audit"][0]["action"], "retry_now");
    assert_eq!(shown["audit"][0]["reason"], "payment service redeployed");
    assert!(
        shown["audit"][0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("loopback")
    );
}

/// A saga whose step a succeeded and whose step b is being retried (503), on a coordinator
/// with an admin token.
struct Retrying {
    _db: dtx_tests::Database,
    coord: CoordinatorProc,
    p: Participant,
    client: dtx::Client,
    gid: String,
}

impl Retrying {
    async fn start(backend: Backend) -> Self {
        let db = backend.fresh().await;
        let coord = CoordinatorProc::start(&db.url, &[("DTX_ADMIN_TOKEN", "s3cret")]).await;
        let p = Participant::start().await;
        p.set("b/action", Behaviour::Status(503));
        let client = coord.client();
        let gid = client.submit_saga(&saga(&p, 1000)).await.unwrap().gid;
        eventually(Duration::from_secs(10), "step b to be retrying", || {
            let n = p.count("b/action", &gid);
            async move { (n >= 2).then_some(()) }
        })
        .await;
        Self {
            _db: db,
            coord,
            p,
            client,
            gid,
        }
    }
}

async fn force_abort_runs_the_compensations_and_needs_the_token(backend: Backend) {
    let Retrying {
        _db,
        coord,
        p,
        client,
        gid,
    } = Retrying::start(backend).await;

    let http = reqwest::Client::new();
    let url = format!("{}/api/admin/transactions/{gid}/abort", coord.url);
    let body = json!({"reason": "payment provider down for the day", "actor": "alice@oncall"});
    let res = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 401, "no token, no action");
    let res = http
        .post(&url)
        .bearer_auth("s3cret")
        .json(&json!({"reason": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "a reason is required");
    let res = http
        .post(&url)
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let done = query_until(&client, &gid, "the forced rollback", |t| {
        t.status.is_final()
    })
    .await;
    assert_eq!(done.status, GlobalStatus::Failed);
    assert!(
        done.rollback_reason
            .unwrap_or_default()
            .contains("forced by alice@oncall")
    );
    assert_eq!(
        p.count("b/compensate", &gid),
        1,
        "b may have run: compensated"
    );
    assert_eq!(p.count("a/compensate", &gid), 1);

    let audit: Value = http
        .get(format!("{}/api/admin/transactions/{gid}/audit", coord.url))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit[0]["action"], "force_abort");
    assert_eq!(audit[0]["actor"], "alice@oncall (token admin)");

    // A final transaction cannot be retried or aborted; the CLI says so and fails.
    let (ok, out) = cli(
        &coord.url,
        Some("s3cret"),
        &["retry", &gid, "--reason", "again"],
    );
    assert!(!ok && out.contains("409"), "{out}");
}

/// A compensation the operator already did by hand (a refund, say) is marked done while
/// the saga still runs forward; the rollback forced afterwards does not call it again.
async fn a_compensation_marked_done_by_hand_is_not_called_by_the_rollback(backend: Backend) {
    let Retrying {
        _db,
        coord,
        p,
        client,
        gid,
    } = Retrying::start(backend).await;

    let http = reqwest::Client::new();
    let admin = |path: &str| format!("{}/api/admin/transactions/{gid}/{path}", coord.url);
    let res = http
        .post(admin("branches/01/compensate/done"))
        .bearer_auth("s3cret")
        .json(&json!({"reason": "refunded by hand"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let shown = client.query(&gid).await.unwrap();
    let comp = shown
        .branches
        .iter()
        .find(|b| b.branch_id == "01" && b.op == dtx::Op::Compensate)
        .expect("a's compensation listed");
    assert_eq!(comp.status, dtx::OpStatus::Succeeded);

    let res = http
        .post(admin("abort"))
        .bearer_auth("s3cret")
        .json(&json!({"reason": "give up"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let done = query_until(&client, &gid, "the forced rollback", |t| {
        t.status.is_final()
    })
    .await;
    assert_eq!(done.status, GlobalStatus::Failed);
    assert_eq!(
        p.count("b/compensate", &gid),
        1,
        "b may have run: compensated"
    );
    assert_eq!(p.count("a/compensate", &gid), 0, "done by hand: not called");
    assert_eq!(p.count("a/action", &gid), 1);
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
    a_stuck_saga_is_found_retried_and_audited_from_the_cli,
    force_abort_runs_the_compensations_and_needs_the_token,
    a_compensation_marked_done_by_hand_is_not_called_by_the_rollback
);
