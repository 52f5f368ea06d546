//! DTM compatibility: DTM's own Python client drives sagas and TCCs against dtx, and the
//! `/api/dtmsvr` answers have DTM's shapes and spellings.

use std::process::Command;
use std::time::Duration;

use dtx_tests::{Backend, Behaviour, CoordinatorProc, Participant, eventually};
use serde_json::{Value, json};

async fn dtm_status(base: &str, gid: &str) -> Value {
    reqwest::get(format!("{base}/api/dtmsvr/query?gid={gid}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn final_dtm_status(base: &str, gid: &str) -> String {
    eventually(
        Duration::from_secs(20),
        &format!("{gid} final"),
        || async move {
            let q = dtm_status(base, gid).await;
            let s = q["transaction"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (s == "succeed" || s == "failed").then_some(s)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtm_python_client_runs_sagas_and_tccs() {
    let db = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(&db.url, &[]).await;
    let p = Participant::start().await;
    p.set("refuse/action", Behaviour::Status(409));
    p.set("refuse/try", Behaviour::Status(409));

    let python = std::env::var("DTX_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/dtm/dtmcli_flow.py");
    let url = coord.url.clone();
    let participant = format!("http://{}", p.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(url)
            .arg(participant)
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
    assert!(out.status.success(), "dtmcli flow failed:\n{stderr}");
    let gids: Value = serde_json::from_slice(out.stdout.trim_ascii()).expect("gids line");
    let gid = |k: &str| gids[k].as_str().unwrap().to_owned();

    let (saga_ok, saga_fail, tcc_ok, tcc_fail) = (
        gid("saga_ok"),
        gid("saga_fail"),
        gid("tcc_ok"),
        gid("tcc_fail"),
    );
    assert_eq!(final_dtm_status(&coord.url, &saga_ok).await, "succeed");
    assert_eq!(p.sequence(&saga_ok), ["out/action", "in/action"]);
    let body: Value = serde_json::from_slice(&p.calls_to("out/action", &saga_ok)[0].body).unwrap();
    assert_eq!(
        body,
        json!({"amount": 30}),
        "DTM's string payload is sent as the body"
    );

    assert_eq!(final_dtm_status(&coord.url, &saga_fail).await, "failed");
    assert_eq!(
        p.sequence(&saga_fail),
        [
            "out/action",
            "refuse/action",
            "refuse/compensate",
            "out/compensate"
        ]
    );

    assert_eq!(final_dtm_status(&coord.url, &tcc_ok).await, "succeed");
    assert_eq!(p.count("tout/confirm", &tcc_ok), 1);
    assert_eq!(p.count("tin/confirm", &tcc_ok), 1);
    assert_eq!(
        p.count("tout/cancel", &tcc_ok) + p.count("tin/cancel", &tcc_ok),
        0
    );

    assert_eq!(final_dtm_status(&coord.url, &tcc_fail).await, "failed");
    let cancels: Vec<String> = p
        .sequence(&tcc_fail)
        .into_iter()
        .filter(|s| s.ends_with("/cancel"))
        .collect();
    assert_eq!(cancels, ["refuse/cancel", "tout/cancel"]);
    assert_eq!(p.count("tout/confirm", &tcc_fail), 0);

    // DTM's query shape: transaction + branches with DTM spellings.
    let q = dtm_status(&coord.url, &saga_ok).await;
    assert_eq!(q["transaction"]["trans_type"], "saga");
    let branches = q["branches"].as_array().unwrap();
    assert_eq!(branches.len(), 4);
    assert!(
        branches
            .iter()
            .any(|b| b["op"] == "action" && b["status"] == "succeed")
    );
    assert!(
        branches
            .iter()
            .any(|b| b["op"] == "compensate" && b["status"] == "prepared")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtm_api_shapes() {
    let db = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(&db.url, &[]).await;
    let p = Participant::start().await;
    let http = reqwest::Client::new();
    let api = format!("{}/api/dtmsvr", coord.url);

    let new_gid: Value = http
        .get(format!("{api}/newGid"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(new_gid["dtm_result"], "SUCCESS");
    let gid = new_gid["gid"].as_str().unwrap().to_owned();

    // A concurrent saga in DTM's encoding: orders in custom_data, step index -> waits for.
    let submit = json!({
        "gid": gid, "trans_type": "saga", "wait_result": true,
        "steps": [{"action": p.url("a/action"), "compensate": p.url("a/compensate")},
                  {"action": p.url("b/action"), "compensate": p.url("b/compensate")}],
        "payloads": ["{\"x\":1}", "{\"x\":2}"],
        "custom_data": "{\"orders\":{\"1\":[0]},\"concurrent\":true}",
        "protocol": "http", "passthrough_headers": [], "request_timeout": 8
    });
    let res = http
        .post(format!("{api}/submit"))
        .json(&submit)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"dtm_result": "SUCCESS"})
    );
    let q = dtm_status(&coord.url, &gid).await;
    assert_eq!(q["transaction"]["status"], "succeed");
    assert_eq!(
        q["transaction"]["custom_data"],
        "{\"orders\":{\"1\":[0]},\"concurrent\":true}"
    );
    assert_eq!(p.sequence(&gid), ["a/action", "b/action"]);

    // Refusals are 409 with dtm_result FAILURE, which DTM clients recognise.
    let res = http
        .post(format!("{api}/abort"))
        .json(&json!({"gid": gid, "trans_type": "saga"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.json::<Value>().await.unwrap()["dtm_result"], "FAILURE");

    // An unknown gid queries as an empty result, as in DTM.
    let q = dtm_status(&coord.url, "no-such-gid").await;
    assert_eq!(q, json!({"transaction": null, "branches": []}));

    // `all` pages newest first.
    let all: Value = http
        .get(format!("{api}/all?limit=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["transactions"][0]["gid"], gid.as_str());
    assert_eq!(all["next_position"], "");
}
