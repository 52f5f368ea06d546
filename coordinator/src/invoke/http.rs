//! Branch calls over HTTP with one pooled client (keep-alive connections are reused
//! across transactions).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;

use dtx::{Op, TransType};

use crate::engine::Outcome;

/// One call to make.
#[derive(Debug)]
pub struct BranchCall<'a> {
    /// Global transaction id.
    pub gid: &'a str,
    /// Mode.
    pub trans_type: TransType,
    /// Branch id.
    pub branch_id: &'a str,
    /// Op.
    pub op: Op,
    /// URL.
    pub target: &'a str,
    /// Body (POST when non-empty, GET when empty).
    pub payload: &'a [u8],
    /// Extra headers.
    pub headers: &'a BTreeMap<String, String>,
    /// W3C trace context of the call.
    pub traceparent: Option<&'a str>,
    /// Timeout of the whole call.
    pub timeout: Duration,
}

/// Calls participants over HTTP/1.1 with one keep-alive pool per participant.
///
/// Built on hyper's pooled client directly: a higher-level client parsed every request's
/// URL twice more (host and IDNA rules included) and wrapped each call in layers this
/// coordinator does not use (redirects, proxies, cookies); measured with `perf` under
/// the benchmark, that was several percent of the coordinator's CPU.
#[derive(Debug, Clone)]
pub struct HttpInvoker {
    client: Client<HttpConnector, Full<Bytes>>,
    limits: TargetLimits,
    /// Targets already parsed, with their participant's gate: a deployment calls a few
    /// URLs over and over, and parsing one (host and IDNA rules included) cost ~2% of the
    /// coordinator's CPU when done at every call.
    targets: Arc<Mutex<HashMap<String, Target>>>,
}

/// A parsed target: the URL to which the call's query is appended (ending in `?` or `&`),
/// and the call gate of its participant.
type Target = (Arc<str>, Arc<Semaphore>);

/// Distinct targets kept parsed; past it the cache starts over.
const PARSED_TARGETS: usize = 1024;

/// The most of a non-2xx answer's body that is read (its start goes into the op's error).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// How many calls may be in flight at once to one participant (`host:port`), so that the
/// recovery after an outage, when every transaction retries together, does not stampede
/// the participant that just came back.
#[derive(Debug, Clone)]
pub struct TargetLimits {
    default: usize,
    overrides: BTreeMap<String, usize>,
    gates: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl TargetLimits {
    /// `default` calls per target, except the `overrides` (`host:port` → limit).
    pub fn new(default: usize, overrides: BTreeMap<String, usize>) -> Self {
        Self {
            default: default.max(1),
            overrides,
            gates: Arc::default(),
        }
    }

    fn gate(&self, authority: &str) -> Arc<Semaphore> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        let limit = self
            .overrides
            .get(authority)
            .copied()
            .unwrap_or(self.default)
            .max(1);
        Arc::clone(
            gates
                .entry(authority.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(limit))),
        )
    }
}

impl Default for HttpInvoker {
    fn default() -> Self {
        Self::new(TargetLimits::new(64, BTreeMap::new()))
    }
}

impl HttpInvoker {
    /// An invoker with a keep-alive pool per participant host and these limits.
    pub fn new(limits: TargetLimits) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        // A participant answers; it does not send the coordinator elsewhere: a 3xx is an
        // answer like any other non-2xx (transient), never followed.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            limits,
            targets: Arc::default(),
        }
    }

    /// The target parsed, with the gate of its participant (`host:port`).
    fn target(&self, target: &str) -> Result<Target, String> {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((base, gate)) = targets.get(target) {
            return Ok((Arc::clone(base), Arc::clone(gate)));
        }
        let mut url =
            reqwest::Url::parse(target).map_err(|e| format!("bad target URL {target}: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "{target}: only http:// participants are supported (no TLS in this build)"
            ));
        }
        // Never sent over HTTP; it would otherwise end up before the query.
        url.set_fragment(None);
        let authority = format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        );
        let gate = self.limits.gate(&authority);
        let mut base = String::from(url.as_str());
        base.push(if url.query().is_some() { '&' } else { '?' });
        let base: Arc<str> = base.into();
        if targets.len() >= PARSED_TARGETS {
            targets.clear();
        }
        targets.insert(target.to_owned(), (Arc::clone(&base), Arc::clone(&gate)));
        Ok((base, gate))
    }

    /// Calls one branch op and classifies the answer.
    pub async fn call(&self, call: &BranchCall<'_>) -> Outcome {
        let (base, gate) = match self.target(call.target) {
            Ok(t) => t,
            Err(e) => return Outcome::Transient(e),
        };
        let Ok(_permit) = gate.acquire_owned().await else {
            return Outcome::Transient(format!("{}: call limit closed", call.target));
        };
        match tokio::time::timeout(call.timeout, self.exchange(&base, call)).await {
            Ok(Ok((status, body))) => classify(status, &body),
            Ok(Err(e)) => Outcome::Transient(format!("{}: {e}", call.target)),
            Err(_) => Outcome::Transient(format!(
                "{} timed out after {} ms",
                call.target,
                call.timeout.as_millis()
            )),
        }
    }

    /// Sends the request and reads the answer's status (and its body, when not 2xx).
    async fn exchange(&self, base: &str, call: &BranchCall<'_>) -> Result<(u16, String), String> {
        let query = serde_urlencoded::to_string([
            ("gid", call.gid),
            ("trans_type", call.trans_type.as_str()),
            ("branch_id", call.branch_id),
            ("op", call.op.as_str()),
        ])
        .map_err(|e| e.to_string())?;
        let mut uri = String::with_capacity(base.len() + query.len());
        uri.push_str(base);
        uri.push_str(&query);
        let mut req = hyper::Request::builder()
            .uri(uri)
            .header("dtx-gid", call.gid)
            .header("dtx-trans-type", call.trans_type.as_str())
            .header("dtx-branch-id", call.branch_id)
            .header("dtx-op", call.op.as_str());
        req = if call.payload.is_empty() {
            req.method(hyper::Method::GET)
        } else {
            req.method(hyper::Method::POST)
                .header("content-type", "application/json")
        };
        for (k, v) in call.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(tp) = call.traceparent {
            req = req.header("traceparent", tp);
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(call.payload)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| error_chain(&e))?;
        let status = res.status().as_u16();
        if (200..300).contains(&status) {
            // Read to the end, so that the connection goes back to the pool.
            let _ = Limited::new(res.into_body(), ERROR_BODY_LIMIT)
                .collect()
                .await;
            return Ok((status, String::new()));
        }
        let body = match Limited::new(res.into_body(), ERROR_BODY_LIMIT)
            .collect()
            .await
        {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(e) => format!("(body unreadable: {e})"),
        };
        Ok((status, body))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// DESIGN §4: 2xx SUCCESS, 409 FAILURE, 425 ONGOING, anything else transient.
pub fn classify(status: u16, body: &str) -> Outcome {
    let excerpt: String = body.chars().take(300).collect();
    match status {
        200..=299 => Outcome::Success,
        409 => Outcome::Failure(format!("HTTP 409: {excerpt}")),
        425 => Outcome::Ongoing,
        _ => Outcome::Transient(format!("HTTP {status}: {excerpt}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_is_by_status_only() {
        assert_eq!(classify(200, "FAILURE"), Outcome::Success);
        assert_eq!(classify(204, ""), Outcome::Success);
        assert!(matches!(classify(409, "no stock"), Outcome::Failure(m) if m.contains("no stock")));
        assert_eq!(classify(425, ""), Outcome::Ongoing);
        assert!(matches!(classify(500, "SUCCESS"), Outcome::Transient(_)));
        assert!(matches!(classify(400, ""), Outcome::Transient(_)));
        assert!(matches!(classify(404, ""), Outcome::Transient(_)));
    }
}
