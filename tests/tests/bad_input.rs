//! DESIGN §8: malformed input gets a 4xx with a JSON body naming the problem, nothing is
//! stored, and the coordinator keeps serving.

use dtx_tests::{Backend, CoordinatorProc};
use serde_json::{Value, json};

async fn post(c: &reqwest::Client, url: String, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let res = c
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("answer is not JSON: {text}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_with_a_named_field() {
    let db = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(&db.url, &[]).await;
    let http = reqwest::Client::new();
    let sagas = format!("{}/api/v1/sagas", coord.url);
    let ok_step = json!({"action": "http://127.0.0.1:9/a", "compensate": "http://127.0.0.1:9/c"});

    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({}), 422, "steps"),
        (json!({"steps": []}), 400, "steps"),
        (json!({"gid": "has space", "steps": [ok_step]}), 400, "gid"),
        (
            json!({"gid": "x".repeat(129), "steps": [ok_step]}),
            400,
            "gid",
        ),
        (
            json!({"steps": [{"action": "not a url"}]}),
            400,
            "steps[0].action",
        ),
        (
            json!({"steps": [{"action": "ftp://h/x"}]}),
            400,
            "steps[0].action",
        ),
        (
            json!({"steps": [ok_step, {"action": "http://127.0.0.1:9/b", "compensate": "nope"}]}),
            400,
            "steps[1].compensate",
        ),
        (json!({"stepz": []}), 422, "stepz"),
        (
            json!({"steps": [ok_step], "options": {"retry_limit": 0}}),
            400,
            "options.retry_limit",
        ),
        (
            json!({"steps": [ok_step], "options": {"request_timeout_ms": 0}}),
            400,
            "options.request_timeout_ms",
        ),
        (
            json!({"steps": [ok_step], "options": {"branch_headers": {"bad header": "v"}}}),
            400,
            "options.branch_headers",
        ),
        (
            json!({"steps": [{"action": "http://h/a", "after": [1]}, {"action": "http://h/b", "after": [0]}], "concurrent": true}),
            400,
            "steps",
        ),
        (
            json!({"steps": [{"action": "http://h/a", "after": [7]}], "concurrent": true}),
            400,
            "steps[0].after",
        ),
        (
            json!({"steps": [ok_step, {"action": "http://h/b", "after": [0]}]}),
            400,
            "steps[1].after",
        ),
        (json!({"steps": vec![ok_step.clone(); 513]}), 400, "steps"),
        (json!({"steps": "many"}), 422, ""),
    ];
    for (body, status, field) in cases {
        let (got, answer) = post(&http, sagas.clone(), body.to_string()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
        if !field.is_empty() {
            assert_eq!(answer["field"], field, "{body} -> {answer}");
        }
    }

    // Not JSON at all.
    let (got, answer) = post(&http, sagas.clone(), "{not json").await;
    assert_eq!(got, 400, "{answer}");
    // Larger than the body limit (1 MiB by default).
    let huge = json!({"steps": [{"action": "http://h/a", "payload": "x".repeat(2 << 20)}]});
    // The server answers before reading the whole body and closes that connection: send
    // it on a client of its own, so that the next requests do not reuse a dying connection.
    let (got, answer) = post(&reqwest::Client::new(), sagas.clone(), huge.to_string()).await;
    assert_eq!(got, 413, "{answer}");

    // Unknown gid, unknown route, bad listing parameters.
    let res = http
        .get(format!("{}/api/v1/transactions/nope", coord.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["field"], "gid");
    let res = http
        .get(format!("{}/api/v2/whatever", coord.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.json::<Value>().await.unwrap()["error"].is_string());
    let res = http
        .get(format!("{}/api/v1/transactions?limit=0", coord.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["field"], "limit");
    let res = http
        .get(format!("{}/api/v1/transactions?status=done", coord.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    // TCC operations on the wrong transaction or state.
    let (got, _) = post(
        &http,
        format!("{}/api/v1/transactions/nope/submit", coord.url),
        "",
    )
    .await;
    assert_eq!(got, 404);
    let (got, answer) = post(
        &http,
        format!("{}/api/v1/tcc", coord.url),
        json!({"gid": "t-1"}).to_string(),
    )
    .await;
    assert_eq!(got, 200, "{answer}");
    let reg = json!({"branch_id": "01/x", "confirm": "http://h/c", "cancel": "http://h/x"});
    let (got, answer) = post(
        &http,
        format!("{}/api/v1/transactions/t-1/branches", coord.url),
        reg.to_string(),
    )
    .await;
    assert_eq!((got, answer["field"].as_str()), (400, Some("branch_id")));
    let (got, _) = post(
        &http,
        format!("{}/api/v1/sagas", coord.url),
        json!({"gid": "t-1", "steps": [ok_step]}).to_string(),
    )
    .await;
    assert_eq!(got, 409, "a gid in use by another mode is refused");

    // DTM edge: refusals carry dtm_result FAILURE.
    let (got, answer) = post(
        &http,
        format!("{}/api/dtmsvr/submit", coord.url),
        json!({"gid": "g", "trans_type": "bogus"}).to_string(),
    )
    .await;
    assert_eq!(
        (got, answer["field"].as_str(), answer["dtm_result"].as_str()),
        (400, Some("trans_type"), Some("FAILURE"))
    );
    let (got, _) = post(
        &http,
        format!("{}/api/dtmsvr/prepare", coord.url),
        json!({"gid": "g", "trans_type": "saga"}).to_string(),
    )
    .await;
    assert_eq!(got, 400);

    // Nothing of the above was stored except the TCC, and the coordinator still serves.
    let list: Value = http
        .get(format!("{}/api/v1/transactions", coord.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let gids: Vec<&str> = list["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["gid"].as_str().unwrap())
        .collect();
    assert_eq!(gids, ["t-1"]);
    let health: Value = http
        .get(format!("{}/healthz", coord.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok", "store": "sqlite"}));
}
