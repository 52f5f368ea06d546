//! Branch calls over HTTP with one pooled client (keep-alive connections are reused
//! across transactions).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Calls participants over HTTP.
#[derive(Debug, Clone)]
pub struct HttpInvoker {
    client: reqwest::Client,
    limits: TargetLimits,
    /// Targets already parsed, with their participant's gate: a deployment calls a few
    /// URLs over and over, and parsing one (host and IDNA rules included) cost ~2% of the
    /// coordinator's CPU when done at every call.
    targets: Arc<Mutex<HashMap<String, Target>>>,
}

/// A parsed target URL and the call gate of its participant.
type Target = (reqwest::Url, Arc<Semaphore>);

/// Distinct targets kept parsed; past it the cache starts over.
const PARSED_TARGETS: usize = 1024;

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
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            // A participant answers; it does not send the coordinator elsewhere (a 3xx is
            // an answer like any other non-2xx: transient). Following redirects also cost
            // a second parse of every URL.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            client,
            limits,
            targets: Arc::default(),
        }
    }

    /// The target parsed, with the gate of its participant (`host:port`).
    fn target(&self, target: &str) -> Result<Target, String> {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((url, gate)) = targets.get(target) {
            return Ok((url.clone(), Arc::clone(gate)));
        }
        let url =
            reqwest::Url::parse(target).map_err(|e| format!("bad target URL {target}: {e}"))?;
        let authority = format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        );
        let gate = self.limits.gate(&authority);
        if targets.len() >= PARSED_TARGETS {
            targets.clear();
        }
        targets.insert(target.to_owned(), (url.clone(), Arc::clone(&gate)));
        Ok((url, gate))
    }

    /// Calls one branch op and classifies the answer.
    pub async fn call(&self, call: &BranchCall<'_>) -> Outcome {
        let (mut url, gate) = match self.target(call.target) {
            Ok(t) => t,
            Err(e) => return Outcome::Transient(e),
        };
        let Ok(_permit) = gate.acquire_owned().await else {
            return Outcome::Transient(format!("{}: call limit closed", call.target));
        };
        url.query_pairs_mut()
            .append_pair("gid", call.gid)
            .append_pair("trans_type", call.trans_type.as_str())
            .append_pair("branch_id", call.branch_id)
            .append_pair("op", call.op.as_str());
        let mut req = if call.payload.is_empty() {
            self.client.get(url)
        } else {
            self.client
                .post(url)
                .header("content-type", "application/json")
                .body(call.payload.to_vec())
        };
        req = req
            .timeout(call.timeout)
            .header("dtx-gid", call.gid)
            .header("dtx-trans-type", call.trans_type.as_str())
            .header("dtx-branch-id", call.branch_id)
            .header("dtx-op", call.op.as_str());
        for (k, v) in call.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(tp) = call.traceparent {
            req = req.header("traceparent", tp);
        }
        match req.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                let body = if (200..300).contains(&status) {
                    String::new()
                } else {
                    res.text().await.unwrap_or_default()
                };
                classify(status, &body)
            }
            Err(e) if e.is_timeout() => Outcome::Transient(format!(
                "{} timed out after {} ms",
                call.target,
                call.timeout.as_millis()
            )),
            Err(e) => Outcome::Transient(format!("{}: {}", call.target, error_chain(&e))),
        }
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
