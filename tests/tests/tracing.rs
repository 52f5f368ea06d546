//! Traces: spans per drive and per branch call reach an OTLP collector (a real HTTP one on
//! loopback, reading the JSON encoding), they continue the initiator's W3C trace, and the
//! participants receive a `traceparent` of the call's own span. Without tracing, the
//! participants still receive the initiator's trace context.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use dtx_tests::{Backend, Behaviour, CoordinatorProc, Participant, eventually};
use serde_json::{Value, json};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

type Spans = Arc<Mutex<Vec<Value>>>;

/// An OTLP/HTTP collector that keeps every span it receives (JSON encoding).
async fn collector() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(|State(spans): State<Spans>, body: Bytes| async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let mut got = spans.lock().unwrap();
                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        got.extend(ss["spans"].as_array().into_iter().flatten().cloned());
                    }
                }
                "{}"
            }),
        )
        .with_state(Arc::clone(&spans));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), spans)
}

fn saga_body(p: &Participant) -> Value {
    json!({
        "steps": [
            {"action": p.url("a/action"), "compensate": p.url("a/compensate")},
            {"action": p.url("b/action"), "compensate": p.url("b/compensate")}
        ],
        "options": {"retry_interval_ms": 20},
        "wait_result": true
    })
}

async fn submit(coord: &CoordinatorProc, body: &Value, traceparent: Option<&str>) -> String {
    let mut req = reqwest::Client::new()
        .post(format!("{}/api/v1/sagas", coord.url))
        .json(body);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let res: Value = req.send().await.unwrap().json().await.unwrap();
    assert_eq!(res["status"], "succeeded", "{res}");
    res["gid"].as_str().unwrap().to_owned()
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_and_continue_the_initiators_trace() {
    let (endpoint, spans) = collector().await;
    let db = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(
        &db.url,
        &[
            ("DTX_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let p = Participant::start().await;
    p.set(
        "b/action",
        Behaviour::FailTimes {
            times: 1,
            status: 503,
        },
    );
    let initiator = format!("00-{TRACE}-{PARENT}-01");
    let gid = submit(&coord, &saga_body(&p), Some(&initiator)).await;

    // Each call carries the initiator's trace id and a span id of its own.
    let calls: Vec<_> = p.calls().into_iter().filter(|c| c.gid == gid).collect();
    assert_eq!(calls.len(), 3, "a, b refused, b again");
    let mut call_spans = Vec::new();
    for c in &calls {
        let tp = c
            .traceparent
            .as_deref()
            .expect("a traceparent on every call");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!((parts[0], parts[1]), ("00", TRACE), "{tp}");
        assert_ne!(parts[2], PARENT, "the call's own span, not the initiator's");
        call_spans.push(parts[2].to_owned());
    }
    call_spans.sort();
    call_spans.dedup();
    assert_eq!(call_spans.len(), 3, "one span per call");

    // The collector receives the drive's span (child of the initiator's) and one span per
    // call (children of the drive), with the gid on the drive's.
    let (drive, branch_calls) =
        eventually(Duration::from_secs(20), "spans at the collector", || {
            let got = spans.lock().unwrap().clone();
            let gid = gid.clone();
            let call_spans = call_spans.clone();
            async move {
                let drive = got
                    .iter()
                    .find(|s| s["name"] == "transaction" && attr(s, "gid") == Some(gid.as_str()))?
                    .clone();
                let calls: Vec<Value> = got
                    .iter()
                    .filter(|s| s["name"] == "branch_call" && s["traceId"] == TRACE)
                    .filter(|s| call_spans.iter().any(|c| s["spanId"] == c.as_str()))
                    .cloned()
                    .collect();
                (calls.len() == 3).then_some((drive, calls))
            }
        })
        .await;
    assert_eq!(drive["traceId"], TRACE);
    assert_eq!(drive["parentSpanId"], PARENT);
    for c in &branch_calls {
        assert_eq!(c["parentSpanId"], drive["spanId"], "{c}");
        assert!(attr(c, "url").unwrap().contains("/action"), "{c}");
    }
    let outcomes: Vec<&str> = branch_calls
        .iter()
        .filter_map(|c| attr(c, "outcome"))
        .collect();
    assert!(
        outcomes.contains(&"transient") && outcomes.contains(&"success"),
        "{outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracing_participants_still_get_the_trace_context() {
    let db = Backend::Sqlite.fresh().await;
    let coord = CoordinatorProc::start(&db.url, &[]).await;
    let p = Participant::start().await;
    let initiator = format!("00-{TRACE}-{PARENT}-01");
    let gid = submit(&coord, &saga_body(&p), Some(&initiator)).await;
    for c in p.calls().into_iter().filter(|c| c.gid == gid) {
        assert_eq!(c.traceparent.as_deref(), Some(initiator.as_str()));
    }
    // A malformed header is ignored; a transaction without one gets a trace of its own,
    // the same for all its calls.
    let gid = submit(&coord, &saga_body(&p), Some("00-nonsense")).await;
    let tps: Vec<String> = p
        .calls()
        .into_iter()
        .filter(|c| c.gid == gid)
        .map(|c| c.traceparent.expect("a traceparent"))
        .collect();
    assert_eq!(tps.len(), 2);
    assert_eq!(tps[0], tps[1]);
    assert_eq!(tps[0].len(), 55, "{}", tps[0]);
    assert!(!tps[0].contains(TRACE));
}
