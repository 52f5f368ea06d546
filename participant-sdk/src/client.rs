//! An async client for the coordinator's native API.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    Accepted, ErrorBody, Finish, NewGid, PrepareTcc, RegisterBranch, SubmitSaga, TransactionView,
};

/// What can go wrong when talking to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator could not be reached or did not answer in time.
    #[error("coordinator at {url} unreachable: {source}")]
    Transport {
        /// The URL called.
        url: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The coordinator refused the request (bad input, wrong state, unknown gid, ...).
    #[error("coordinator answered {status} at {url}: {}", body.error)]
    Refused {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The coordinator's explanation.
        body: ErrorBody,
    },
    /// The answer could not be decoded.
    #[error("unexpected answer from {url}: {detail}")]
    Protocol {
        /// The URL called.
        url: String,
        /// What did not match.
        detail: String,
    },
}

impl ClientError {
    /// The HTTP status of a refusal, if the coordinator answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one coordinator, cheap to clone (it shares one connection pool).
///
/// ```no_run
/// # async fn demo() -> Result<(), dtx::ClientError> {
/// use dtx::api::{SagaStep, SubmitSaga};
/// let client = dtx::Client::new("http://127.0.0.1:36789");
/// let accepted = client
///     .submit_saga(&SubmitSaga {
///         steps: vec![SagaStep {
///             action: "http://127.0.0.1:8081/reserve".into(),
///             compensate: Some("http://127.0.0.1:8081/release".into()),
///             payload: Some(serde_json::json!({"sku": "A1", "qty": 2})),
///             ..Default::default()
///         }],
///         ..Default::default()
///     })
///     .await?;
/// println!("{} is {}", accepted.gid, accepted.status);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the coordinator at `base_url` (e.g. `http://127.0.0.1:36789`), with a
    /// 30 s request timeout.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self::with_timeout(base_url, Duration::from_secs(30))
    }

    /// A client with its own request timeout (make it longer than any `wait_result` wait).
    pub fn with_timeout(base_url: impl Into<String>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let base = base_url.into().trim_end_matches('/').to_owned();
        Self { base, http }
    }

    /// Asks the coordinator for a fresh gid.
    pub async fn new_gid(&self) -> Result<String, ClientError> {
        let got: NewGid = self.post("/api/v1/gids", &serde_json::json!({})).await?;
        Ok(got.gid)
    }

    /// Submits a whole saga.
    pub async fn submit_saga(&self, saga: &SubmitSaga) -> Result<Accepted, ClientError> {
        self.post("/api/v1/sagas", saga).await
    }

    /// Stores a message (prepared, or delivered at once).
    pub async fn put_msg(&self, msg: &crate::api::PutMsg) -> Result<Accepted, ClientError> {
        self.post("/api/v1/msgs", msg).await
    }

    /// Prepares a TCC transaction.
    pub async fn prepare_tcc(&self, prepare: &PrepareTcc) -> Result<Accepted, ClientError> {
        self.post("/api/v1/tcc", prepare).await
    }

    /// Prepares an XA transaction.
    pub async fn prepare_xa(&self, prepare: &PrepareTcc) -> Result<Accepted, ClientError> {
        self.post("/api/v1/xa", prepare).await
    }

    /// Registers a TCC branch (call before the branch's try) or an XA branch.
    pub async fn register_branch(
        &self,
        gid: &str,
        branch: &RegisterBranch,
    ) -> Result<Accepted, ClientError> {
        self.post(&format!("/api/v1/transactions/{gid}/branches"), branch)
            .await
    }

    /// Submits a prepared transaction (phase 2 commit).
    pub async fn submit(&self, gid: &str, finish: &Finish) -> Result<Accepted, ClientError> {
        self.post(&format!("/api/v1/transactions/{gid}/submit"), finish)
            .await
    }

    /// Aborts a prepared transaction (phase 2 rollback).
    pub async fn abort(&self, gid: &str, finish: &Finish) -> Result<Accepted, ClientError> {
        self.post(&format!("/api/v1/transactions/{gid}/abort"), finish)
            .await
    }

    /// Reads a transaction with its branch ops.
    pub async fn query(&self, gid: &str) -> Result<TransactionView, ClientError> {
        let url = format!("{}/api/v1/transactions/{gid}", self.base);
        let res = self.http.get(&url).send().await;
        Self::decode(url, res).await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let res = self.http.post(&url).json(body).send().await;
        Self::decode(url, res).await
    }

    async fn decode<T: DeserializeOwned>(
        url: String,
        res: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, ClientError> {
        let res = match res {
            Ok(res) => res,
            Err(source) => return Err(ClientError::Transport { url, source }),
        };
        let status = res.status();
        let bytes = match res.bytes().await {
            Ok(b) => b,
            Err(source) => return Err(ClientError::Transport { url, source }),
        };
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
                url,
                detail: e.to_string(),
            })
        } else {
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                error: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                field: None,
            });
            Err(ClientError::Refused {
                url,
                status: status.as_u16(),
                body,
            })
        }
    }
}
