//! A small fault proxy in front of a participant: it answers a share of the calls with a
//! 5xx, delays another share past any sensible timeout before passing them on (the work
//! happens late, after the caller gave up), and resets the connection on a third; the rest
//! go through untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

/// Counters of a running proxy.
#[derive(Debug, Default)]
pub struct Counts {
    /// Calls passed on untouched.
    pub forwarded: AtomicU64,
    /// Calls answered 503.
    pub errors: AtomicU64,
    /// Calls delayed past the caller's timeout.
    pub slow: AtomicU64,
    /// Connections reset.
    pub resets: AtomicU64,
}

impl Counts {
    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
            + self.slow.load(Ordering::Relaxed)
            + self.resets.load(Ordering::Relaxed)
    }
}

struct Proxy {
    upstream: String,
    rate: f64,
    slow: Duration,
    http: reqwest::Client,
    counts: Arc<Counts>,
}

/// Starts a proxy to `upstream` (a base URL) failing `rate` of the calls; returns its base
/// URL and its counters.
pub async fn start(upstream: &str, rate: f64, slow: Duration) -> (String, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let proxy = Arc::new(Proxy {
        upstream: upstream.trim_end_matches('/').to_owned(),
        rate,
        slow,
        http: reqwest::Client::new(),
        counts: Arc::clone(&counts),
    });
    let app = Router::new()
        .route("/{*path}", any(handle))
        .with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, counts)
}

async fn handle(
    State(p): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let roll = fastrand::f64();
    let third = p.rate / 3.0;
    if roll < third {
        p.counts.errors.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::SERVICE_UNAVAILABLE, "injected fault").into_response();
    }
    if roll < 2.0 * third {
        // A body that fails mid-stream makes the server drop the connection: the caller
        // sees it reset, not an answer.
        p.counts.resets.fetch_add(1, Ordering::Relaxed);
        let failing = futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("injected reset"))
        });
        return Response::new(Body::from_stream(failing));
    }
    if roll < p.rate {
        p.counts.slow.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(p.slow).await;
    } else {
        p.counts.forwarded.fetch_add(1, Ordering::Relaxed);
    }
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut req = p
        .http
        .request(method, format!("{}{path}", p.upstream))
        .body(body);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    match req.send().await {
        Ok(res) => {
            let status = res.status();
            let bytes = res.bytes().await.unwrap_or_default();
            (status, bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
