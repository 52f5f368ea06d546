//! The operator's console: the admin API's listing filters, the actions on one branch op
//! and on the retry budget, viewer and admin roles, the OpenAPI file, `/metrics`, and the
//! dashboard driven in a real headless Chromium.

use std::process::Command;
use std::time::Duration;

use dtx::api::{SagaStep, SubmitSaga, TxOptions};
use dtx_tests::{Backend, Behaviour, CoordinatorProc, Participant, eventually};
use serde_json::{Value, json};

const ADMIN: &str = "admin-s3cret";
const VIEWER: &str = "viewer-s3cret";

fn saga(p: &Participant, gid: &str, limit: u32) -> SubmitSaga {
    let step = |n: &str| SagaStep {
        action: p.url(&format!("{n}/action")),
        compensate: Some(p.url(&format!("{n}/compensate"))),
        ..Default::default()
    };
    SubmitSaga {
        gid: Some(gid.to_owned()),
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

fn host_of(p: &Participant) -> String {
    p.url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn detail(&self, gid: &str) -> Value {
        let (status, v) = self
            .get(&format!("/api/admin/transactions/{gid}"), Some(VIEWER))
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn gids(&self, query: &str) -> Vec<String> {
        let (status, v) = self
            .get(&format!("/api/admin/transactions?{query}"), Some(VIEWER))
            .await;
        assert_eq!(status, 200, "{query}: {v}");
        v["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["gid"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until the transaction's detail satisfies `f`.
    async fn until(&self, gid: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        eventually(Duration::from_secs(20), what, || async {
            let d = self.detail(gid).await;
            f(&d).then_some(d)
        })
        .await
    }
}

fn branch_of(detail: &Value, target_suffix: &str) -> String {
    detail["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["target"].as_str().unwrap().ends_with(target_suffix))
        .unwrap_or_else(|| panic!("no branch op calling {target_suffix}: {detail}"))["branch_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| {
            (k.starts_with(&format!("{name}{{")) || *k == name)
                && labels.iter().all(|lab| k.contains(lab))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

async fn operators_filter_and_act_on_ops_and_budgets(backend: Backend) {
    let db = backend.fresh().await;
    let coord = CoordinatorProc::start(
        &db.url,
        &[("DTX_ADMIN_TOKEN", ADMIN), ("DTX_VIEWER_TOKEN", VIEWER)],
    )
    .await;
    let admin = Admin {
        http: reqwest::Client::new(),
        base: coord.url.clone(),
    };
    let client = coord.client();
    let (p1, p2) = (Participant::start().await, Participant::start().await);
    p2.set("b/action", Behaviour::Status(503));
    let run = format!("r{:08x}", fastrand::u32(..));
    // Two healthy sagas on p1, two stuck ones on p2 (budget of 2 calls per op).
    for i in 0..2 {
        client
            .submit_saga(&saga(&p1, &format!("{run}-ok-{i}"), 2))
            .await
            .unwrap();
    }
    let stuck: Vec<String> = (0..2).map(|i| format!("{run}-stuck-{i}")).collect();
    for gid in &stuck {
        client.submit_saga(&saga(&p2, gid, 2)).await.unwrap();
    }
    for gid in &stuck {
        admin
            .until(gid, "needs_attention", |d| d["needs_attention"].is_string())
            .await;
    }

    // Reading needs a token; a viewer token reads but cannot act.
    assert_eq!(admin.get("/api/admin/transactions", None).await.0, 401);
    let (status, _) = admin
        .post(
            &format!("/api/admin/transactions/{}/retry", stuck[0]),
            Some(VIEWER),
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(status, 403, "a viewer cannot act");

    // Filters: prefix, attention, participant host, status, age; keyset paging.
    let mut all = admin.gids(&format!("gid_prefix={run}-")).await;
    all.sort();
    assert_eq!(all.len(), 4, "{all:?}");
    let mut flagged = admin
        .gids(&format!("gid_prefix={run}-&needs_attention=true"))
        .await;
    flagged.sort();
    assert_eq!(flagged, stuck);
    let mut on_p2 = admin.gids(&format!("host={}", host_of(&p2))).await;
    on_p2.sort();
    assert_eq!(on_p2, stuck, "the host filter finds who calls p2");
    assert_eq!(
        admin
            .gids(&format!("gid_prefix={run}-&status=succeeded"))
            .await
            .len(),
        2
    );
    assert!(
        admin
            .gids(&format!("gid_prefix={run}-&older_than_s=3600"))
            .await
            .is_empty(),
        "nothing is an hour old"
    );
    let (_, first) = admin
        .get(
            &format!("/api/admin/transactions?gid_prefix={run}-&limit=3"),
            Some(VIEWER),
        )
        .await;
    let cursor = first["next"].as_str().expect("a next page").to_owned();
    let rest = admin
        .gids(&format!("gid_prefix={run}-&limit=3&after={cursor}"))
        .await;
    assert_eq!(rest.len(), 1, "4 = 3 + 1 across pages");
    let (status, body) = admin
        .get("/api/admin/transactions?limit=0", Some(VIEWER))
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("limit")));
    let (status, body) = admin
        .get("/api/admin/transactions?host=a%20b", Some(VIEWER))
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("host")));

    // The overview puts both stuck ones first.
    let (_, overview) = admin.get("/api/admin/overview", Some(VIEWER)).await;
    let listed: Vec<&str> = overview["needs_attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["gid"].as_str().unwrap())
        .collect();
    assert!(
        stuck.iter().all(|g| listed.contains(&g.as_str())),
        "{overview}"
    );
    assert_eq!(overview["counts"]["succeeded"]["saga"], 2);

    // Budget: 2 → 4 calls per op. Two more calls, then it is flagged again.
    let (status, body) = admin
        .post(
            &format!("/api/admin/transactions/{}/budget", stuck[0]),
            Some(ADMIN),
            json!({"reason": "give it more time", "retry_limit": 4, "actor": "bob"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(20), "4 calls of b/action", || {
        let n = p2.count("b/action", &stuck[0]);
        async move { (n == 4).then_some(()) }
    })
    .await;
    let d = admin
        .until(&stuck[0], "flagged again", |d| {
            d["needs_attention"].is_string()
        })
        .await;
    assert_eq!(d["options"]["policy"]["retry_limit"], 4);
    // The history keeps the four failed calls of b/action, not a/action's success at its
    // first attempt (its op row says so); the branch's call count has them all.
    let (a, b) = (branch_of(&d, "a/action"), branch_of(&d, "b/action"));
    let history: Vec<(&str, &str)> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["branch_id"].as_str().unwrap(),
                t["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(history, vec![(b.as_str(), "transient"); 4], "{d}");
    let a_op = d["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["branch_id"] == a.as_str() && o["op"] == "action")
        .unwrap();
    assert_eq!(
        (a_op["status"].as_str(), a_op["attempts"].as_i64()),
        (Some("succeeded"), Some(1))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        p2.count("b/action", &stuck[0]),
        4,
        "no call past the new budget"
    );

    // Mark b/action of the first done by hand: it succeeds without another call.
    let b = branch_of(&d, "b/action");
    let (status, body) = admin
        .post(
            &format!(
                "/api/admin/transactions/{}/branches/{b}/action/done",
                stuck[0]
            ),
            Some(ADMIN),
            json!({"reason": "charged by hand in the provider's console"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let d = admin
        .until(&stuck[0], "success", |d| d["status"] == "succeeded")
        .await;
    assert_eq!(p2.count("b/action", &stuck[0]), 4);
    assert_eq!(p2.count("b/compensate", &stuck[0]), 0);
    let audit = d["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0]["action"], "set_budget");
    assert_eq!(audit[0]["detail"], "retry_limit=4");
    assert!(audit[0]["actor"].as_str().unwrap().starts_with("bob"));
    assert_eq!(audit[1]["action"], "mark_done");
    assert_eq!(audit[1]["detail"], format!("{b}/action"));
    assert_eq!(audit[1]["actor"], "admin");

    // Retry one op of the second once the participant is fixed.
    p2.set("b/action", Behaviour::Ok);
    let d = admin.detail(&stuck[1]).await;
    let b = branch_of(&d, "b/action");
    let (status, _) = admin
        .post(
            &format!(
                "/api/admin/transactions/{}/branches/{b}/nope/retry",
                stuck[1]
            ),
            Some(ADMIN),
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(status, 400, "not an op");
    let (status, _) = admin
        .post(
            &format!(
                "/api/admin/transactions/{}/branches/zz/action/retry",
                stuck[1]
            ),
            Some(ADMIN),
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(status, 404, "no such branch");
    let (status, body) = admin
        .post(
            &format!(
                "/api/admin/transactions/{}/branches/{b}/action/retry",
                stuck[1]
            ),
            Some(ADMIN),
            json!({"reason": "provider back"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    admin
        .until(&stuck[1], "success", |d| d["status"] == "succeeded")
        .await;
    assert_eq!(
        p2.count("b/action", &stuck[1]),
        3,
        "2 before, 1 after the retry"
    );
    let (status, _) = admin
        .post(
            &format!(
                "/api/admin/transactions/{}/branches/{b}/action/done",
                stuck[1]
            ),
            Some(ADMIN),
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(status, 409, "a final transaction has nothing left to do");

    // The metrics agree with the participants' own counts. A driver counts a finished
    // transaction right after the commit that a query can already see: read them once
    // the last one has been counted and has left the in-flight gauge.
    let text = dtx_tests::eventually(
        std::time::Duration::from_secs(10),
        "the fourth saga counted as finished",
        || async {
            let text = admin
                .http
                .get(format!("{}/metrics", coord.url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let finished = metric(
                &text,
                "dtx_transactions_finished_total",
                &["outcome=\"succeeded\""],
            );
            let in_flight = metric(&text, "dtx_transactions_in_flight", &[]);
            (finished >= 4.0 && in_flight == 0.0).then_some(text)
        },
    )
    .await;
    assert_eq!(
        metric(
            &text,
            "dtx_transactions_started_total",
            &["trans_type=\"saga\""]
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            "dtx_transactions_finished_total",
            &["outcome=\"succeeded\""]
        ),
        4.0
    );
    let p2_host = format!("target_host=\"{}\"", host_of(&p2));
    assert_eq!(
        metric(
            &text,
            "dtx_branch_attempts_total",
            &[&p2_host, "op=\"action\"", "outcome=\"transient\""]
        ),
        6.0,
        "4 + 2 refused calls of b/action"
    );
    assert_eq!(
        metric(&text, "dtx_operator_actions_total", &[]),
        3.0,
        "{text}"
    );
    assert_eq!(metric(&text, "dtx_transactions_needs_attention", &[]), 0.0);
    assert_eq!(metric(&text, "dtx_transactions_in_flight", &[]), 0.0);
    assert!(metric(&text, "dtx_transaction_duration_seconds_count", &[]) >= 4.0);
    // Each saga was inserted and saved at least once, through the group-commit writers.
    let batches = metric(&text, "dtx_group_commit_batches_total", &[]);
    let writes = metric(&text, "dtx_group_commit_writes_total", &[]);
    assert!(
        writes >= 8.0 && batches >= 1.0 && batches <= writes,
        "{batches} batches of {writes} writes"
    );
    assert_eq!(
        metric(&text, "dtx_group_commit_batch_duration_seconds_count", &[]),
        batches
    );

    // The OpenAPI file describes every admin route.
    let (status, spec) = admin.get("/api/admin/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in [
        "/transactions",
        "/transactions/{gid}",
        "/transactions/{gid}/retry",
        "/transactions/{gid}/abort",
        "/transactions/{gid}/budget",
        "/transactions/{gid}/branches/{branch_id}/{op}/done",
        "/overview",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} missing");
    }
}

/// Runs `dtx-coordinator tx ...` against `url` with `token`.
fn cli(url: &str, token: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(dtx_tests::coordinator::binary())
        .arg("tx")
        .args(args)
        .env("DTX_URL", url)
        .env("DTX_ADMIN_TOKEN", token)
        .output()
        .expect("run the CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_mirrors_the_admin_api() {
    let db = Backend::Sqlite.fresh().await;
    // Every call in the history, first-try successes too.
    let coord = CoordinatorProc::start(
        &db.url,
        &[
            ("DTX_ADMIN_TOKEN", ADMIN),
            ("DTX_VIEWER_TOKEN", VIEWER),
            ("DTX_RECORD_ALL_CALLS", "true"),
        ],
    )
    .await;
    let p = Participant::start().await;
    p.set("b/action", Behaviour::Status(503));
    let gid = format!("cli{:08x}", fastrand::u32(..));
    coord
        .client()
        .submit_saga(&saga(&p, &gid, 1))
        .await
        .unwrap();
    let admin = Admin {
        http: reqwest::Client::new(),
        base: coord.url.clone(),
    };
    let d = admin
        .until(&gid, "needs_attention", |d| {
            d["needs_attention"].is_string()
        })
        .await;
    let b = branch_of(&d, "b/action");

    let (ok, out) = cli(
        &coord.url,
        VIEWER,
        &["list", "--stuck", "--gid-prefix", "cli"],
    );
    assert!(ok && out.contains(&gid) && out.contains("GID"), "{out}");
    let (ok, out) = cli(
        &coord.url,
        VIEWER,
        &["budget", &gid, "--retry-limit", "3", "--reason", "r"],
    );
    assert!(!ok && out.contains("403"), "a viewer cannot act: {out}");
    let (ok, out) = cli(
        &coord.url,
        ADMIN,
        &[
            "budget",
            &gid,
            "--retry-limit",
            "2",
            "--reason",
            "one more",
            "--actor",
            "carol",
        ],
    );
    assert!(ok, "{out}");
    eventually(Duration::from_secs(20), "a second call", || {
        let n = p.count("b/action", &gid);
        async move { (n == 2).then_some(()) }
    })
    .await;
    admin
        .until(&gid, "flagged again", |d| d["needs_attention"].is_string())
        .await;
    let (ok, out) = cli(
        &coord.url,
        ADMIN,
        &["done", &gid, &b, "action", "--reason", "done by hand"],
    );
    assert!(ok, "{out}");
    let d = admin
        .until(&gid, "success", |d| d["status"] == "succeeded")
        .await;
    let (ok, out) = cli(&coord.url, VIEWER, &["show", &gid]);
    assert!(ok, "{out}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["audit"], d["audit"]);
    assert_eq!(shown["audit"][0]["actor"], "carol (token admin)");
    assert_eq!(shown["audit"][1]["action"], "mark_done");
    assert_eq!(
        shown["attempts"].as_array().unwrap().len(),
        3,
        "a/action once, b/action twice (the second after the budget change)"
    );
}

/// The dashboard in Debian's headless Chromium, driven by Playwright (`tests/browser`):
/// an operator finds a stuck saga, filters to it, opens it and retries it once the
/// participant is fixed. Screenshots land in `target/browser-artifacts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: install Debian's `chromium` package (scripts/test does), or set CHROMIUM"
    );
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in tests/browser (scripts/test does)"
    );
    let db = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(
        &db.url,
        &[("DTX_ADMIN_TOKEN", ADMIN), ("DTX_VIEWER_TOKEN", VIEWER)],
    )
    .await;
    let p = Participant::start().await;
    p.set("b/action", Behaviour::Status(503));
    let prefix = format!("ui{:08x}", fastrand::u32(..));
    let client = coord.client();
    // One that gets stuck, one with the same prefix that does not.
    let p_ok = Participant::start().await;
    client
        .submit_saga(&saga(&p_ok, &format!("{prefix}-fine"), 2))
        .await
        .unwrap();
    let gid = format!("{prefix}-stuck");
    client.submit_saga(&saga(&p, &gid, 2)).await.unwrap();
    let admin = Admin {
        http: reqwest::Client::new(),
        base: coord.url.clone(),
    };
    admin
        .until(&gid, "needs_attention", |d| {
            d["needs_attention"].is_string()
        })
        .await;
    // The participant recovers; the operator has not acted yet.
    p.set("b/action", Behaviour::Ok);

    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
    let out = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .env("DTX_URL", &coord.url)
        .env("DTX_GID", &gid)
        .env("DTX_GID_PREFIX", &prefix)
        .env("DTX_TOKEN", ADMIN)
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .output()
        .await
        .expect("run node (Node.js is needed for the browser test)");
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{log}");
    assert!(out.status.success(), "browser test failed:\n{log}");

    let d = admin.detail(&gid).await;
    assert_eq!(d["status"], "succeeded");
    assert_eq!(p.count("b/action", &gid), 3, "2 refused, 1 after the retry");
    assert_eq!(d["audit"][0]["action"], "retry_now");
    assert_eq!(d["audit"][0]["actor"], "admin");
    for shot in [
        "overview",
        "filtered-list",
        "detail-stuck",
        "confirm",
        "detail-succeeded",
    ] {
        assert!(
            std::fs::read_dir(&artifacts)
                .unwrap()
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains(shot)),
            "screenshot {shot} missing"
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

on_every_store!(operators_filter_and_act_on_ops_and_budgets);
