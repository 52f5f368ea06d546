//! A real HTTP participant on loopback that records every call and answers as told.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;

/// How a path answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 with `{"dtm_result":"SUCCESS"}`.
    Ok,
    /// Always this status.
    Status(u16),
    /// This status for the first `times` calls, then 200.
    FailTimes {
        /// How many calls fail.
        times: u32,
        /// With which status.
        status: u16,
    },
    /// Sleep this long before answering 200 for the first `times` calls, then answer at once.
    SlowTimes {
        /// How many calls are slow.
        times: u32,
        /// How slow.
        ms: u64,
    },
    /// Sleep this long before every 200.
    Slow(u64),
}

/// One call the participant received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Path without the leading slash, e.g. `stock/action`.
    pub path: String,
    /// HTTP method.
    pub method: String,
    /// Query parameter `gid`.
    pub gid: String,
    /// Query parameter `branch_id`.
    pub branch_id: String,
    /// Query parameter `op`.
    pub op: String,
    /// Query parameter `trans_type`.
    pub trans_type: String,
    /// Header `dtx-gid`.
    pub header_gid: Option<String>,
    /// Header `traceparent`.
    pub traceparent: Option<String>,
    /// Request body.
    pub body: Vec<u8>,
    /// When the call arrived.
    pub started: Instant,
    /// When it was answered (`None`: the caller gave up first, or it is still running).
    pub finished: Option<Instant>,
    /// The status answered (0 until answered).
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    behaviour: HashMap<String, (Behaviour, u32)>,
    calls: Vec<Recorded>,
}

/// A participant service on `127.0.0.1:<free port>`.
#[derive(Clone)]
pub struct Participant {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Participant {
    /// Starts a participant; every path answers 200 until told otherwise.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/{*path}", any(handle))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind participant");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner }
    }

    /// The URL of `path` (e.g. `stock/action`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Sets how `path` answers from now on.
    pub fn set(&self, path: &str, behaviour: Behaviour) {
        self.inner
            .lock()
            .unwrap()
            .behaviour
            .insert(path.to_owned(), (behaviour, 0));
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Calls of `path` for `gid`.
    pub fn calls_to(&self, path: &str, gid: &str) -> Vec<Recorded> {
        self.calls()
            .into_iter()
            .filter(|c| c.path == path && c.gid == gid)
            .collect()
    }

    /// How many calls `path` received for `gid`.
    pub fn count(&self, path: &str, gid: &str) -> usize {
        self.calls_to(path, gid).len()
    }

    /// The most calls of `path` that were being handled at the same moment.
    pub fn max_concurrency(&self, path: &str) -> usize {
        let calls: Vec<Recorded> = self
            .calls()
            .into_iter()
            .filter(|c| c.path == path)
            .collect();
        calls
            .iter()
            .map(|c| {
                calls
                    .iter()
                    .filter(|o| o.started <= c.started && o.finished.is_none_or(|f| f > c.started))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// The paths called for `gid`, in arrival order.
    pub fn sequence(&self, gid: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.gid == gid)
            .map(|c| c.path)
            .collect()
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(path): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, &'static str) {
    let started = Instant::now();
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    // Recorded on arrival: a call whose caller times out still counts.
    let (behaviour, n, index) = {
        let mut g = inner.lock().unwrap();
        let entry = g
            .behaviour
            .entry(path.clone())
            .or_insert((Behaviour::Ok, 0));
        entry.1 += 1;
        let (behaviour, n) = (entry.0.clone(), entry.1);
        g.calls.push(Recorded {
            path,
            method: method.to_string(),
            gid: get("gid"),
            branch_id: get("branch_id"),
            op: get("op"),
            trans_type: get("trans_type"),
            header_gid: headers
                .get("dtx-gid")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            traceparent: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: body.to_vec(),
            started,
            finished: None,
            status: 0,
        });
        (behaviour, n, g.calls.len() - 1)
    };
    let status = match behaviour {
        Behaviour::Ok => 200,
        Behaviour::Status(s) => s,
        Behaviour::FailTimes { times, status } => {
            if n <= times {
                status
            } else {
                200
            }
        }
        Behaviour::SlowTimes { times, ms } => {
            if n <= times {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            200
        }
        Behaviour::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            200
        }
    };
    {
        let mut g = inner.lock().unwrap();
        let call = &mut g.calls[index];
        call.finished = Some(Instant::now());
        call.status = status;
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let text = if code.is_success() {
        "{\"dtm_result\":\"SUCCESS\"}"
    } else {
        "{\"dtm_result\":\"FAILURE\"}"
    };
    // A redirect names somewhere to go (recorded like any path, should anyone follow it).
    let mut out = HeaderMap::new();
    if code.is_redirection() {
        out.insert(
            axum::http::header::LOCATION,
            axum::http::HeaderValue::from_static("/redirected/action"),
        );
    }
    (code, out, text)
}
