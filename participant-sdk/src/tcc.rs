//! TCC: the participant trait, and the initiator helper that runs phase 1.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{Finish, PrepareTcc, RegisterBranch, TxOptions};
use crate::client::{Client, ClientError};
use crate::context::BranchContext;
use crate::result::BranchResult;
use crate::types::GlobalStatus;

/// A TCC participant: try reserves, confirm makes it final, cancel releases.
///
/// Guard each op with [`crate::barrier::call`] so that duplicates, a cancel without a try
/// and a try after its cancel are handled. Mount it with [`crate::axum::tcc_router`].
///
/// ```
/// use dtx::{BranchContext, BranchResult, TccParticipant};
///
/// struct Account;
///
/// #[async_trait::async_trait]
/// impl TccParticipant for Account {
///     type Request = serde_json::Value;
///     async fn try_(&self, _ctx: &BranchContext, _req: Self::Request) -> BranchResult { Ok(()) }
///     async fn confirm(&self, _ctx: &BranchContext, _req: Self::Request) -> BranchResult { Ok(()) }
///     async fn cancel(&self, _ctx: &BranchContext, _req: Self::Request) -> BranchResult { Ok(()) }
/// }
/// ```
#[async_trait::async_trait]
pub trait TccParticipant: Send + Sync + 'static {
    /// The JSON body of the three ops.
    type Request: DeserializeOwned + Send + 'static;
    /// Phase 1 (`try` is a reserved word): check and reserve.
    async fn try_(&self, ctx: &BranchContext, req: Self::Request) -> BranchResult;
    /// Phase 2 commit: make the reservation final. Must not refuse.
    async fn confirm(&self, ctx: &BranchContext, req: Self::Request) -> BranchResult;
    /// Phase 2 rollback: release the reservation (nothing, if try never ran).
    async fn cancel(&self, ctx: &BranchContext, req: Self::Request) -> BranchResult;
}

/// Why a TCC initiated with [`Tcc::run`] did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TccError {
    /// A participant refused its try (409): the transaction was aborted.
    #[error("branch {branch_id} refused its try: {detail}")]
    Refused {
        /// The branch.
        branch_id: String,
        /// The participant's answer.
        detail: String,
    },
    /// A try failed otherwise (5xx, timeout, unreachable): the transaction was aborted.
    #[error("branch {branch_id} try failed: {detail}")]
    TryFailed {
        /// The branch.
        branch_id: String,
        /// What happened.
        detail: String,
    },
    /// The initiator's own logic gave up: the transaction was aborted.
    #[error("initiator gave up: {0}")]
    Initiator(String),
    /// The coordinator refused or could not be reached. If this happened after prepare,
    /// the coordinator aborts the transaction itself when its `timeout_to_fail` passes.
    #[error(transparent)]
    Coordinator(#[from] ClientError),
}

/// A TCC global transaction in phase 1, handed to the closure of [`Tcc::run`].
pub struct Tcc {
    client: Client,
    gid: String,
    next_branch: AtomicU32,
    http: reqwest::Client,
}

impl Tcc {
    /// Runs a TCC transaction: prepares it, runs `phase_one` (which registers and tries
    /// each branch with [`Tcc::call_branch`]), then submits — or aborts if any try failed
    /// or `phase_one` returned an error. Returns the gid and the final status when
    /// `wait_result` is set (else `submitted`).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), dtx::TccError> {
    /// let client = dtx::Client::new("http://127.0.0.1:36789");
    /// let body = serde_json::json!({"from": "alice", "amount": 30});
    /// let (gid, status) = dtx::Tcc::run(&client, Default::default(), true, async |tcc: &dtx::Tcc| {
    ///     tcc.call_branch(&body, "http://127.0.0.1:8081/account").await?;
    ///     tcc.call_branch(&body, "http://127.0.0.1:8082/account").await?;
    ///     Ok(())
    /// }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn run(
        client: &Client,
        options: TxOptions,
        wait_result: bool,
        phase_one: impl AsyncFnOnce(&Tcc) -> Result<(), TccError>,
    ) -> Result<(String, GlobalStatus), TccError> {
        let prepared = client
            .prepare_tcc(&PrepareTcc { gid: None, options })
            .await?;
        let tcc = Tcc {
            client: client.clone(),
            gid: prepared.gid,
            next_branch: AtomicU32::new(1),
            http: reqwest::Client::new(),
        };
        match phase_one(&tcc).await {
            Ok(()) => {
                let done = client
                    .submit(
                        &tcc.gid,
                        &Finish {
                            wait_result,
                            reason: None,
                        },
                    )
                    .await?;
                Ok((tcc.gid, done.status))
            }
            Err(e) => {
                // If the abort does not get through, the coordinator's timeout aborts.
                let _ = client
                    .abort(
                        &tcc.gid,
                        &Finish {
                            wait_result: false,
                            reason: Some(e.to_string()),
                        },
                    )
                    .await;
                Err(e)
            }
        }
    }

    /// The transaction's gid.
    pub fn gid(&self) -> &str {
        &self.gid
    }

    /// Registers the next branch with the participant mounted at `base_url` (its ops at
    /// `{base_url}/try`, `/confirm`, `/cancel`, as [`crate::axum::tcc_router`] mounts
    /// them) and calls its try with `body`.
    pub async fn call_branch<B: Serialize + ?Sized>(
        &self,
        body: &B,
        base_url: &str,
    ) -> Result<(), TccError> {
        let base = base_url.trim_end_matches('/');
        self.call_branch_at(
            body,
            &format!("{base}/try"),
            &format!("{base}/confirm"),
            &format!("{base}/cancel"),
        )
        .await
    }

    /// Like [`Tcc::call_branch`] with explicit URLs for the three ops.
    pub async fn call_branch_at<B: Serialize + ?Sized>(
        &self,
        body: &B,
        try_url: &str,
        confirm_url: &str,
        cancel_url: &str,
    ) -> Result<(), TccError> {
        let branch_id = format!("{:02}", self.next_branch.fetch_add(1, Ordering::Relaxed));
        let payload = serde_json::to_value(body)
            .map_err(|e| TccError::Initiator(format!("body of branch {branch_id}: {e}")))?;
        // Registered before the try, so that a cancel reaches it whatever the try did.
        let register = RegisterBranch {
            branch_id: branch_id.clone(),
            confirm: confirm_url.to_owned(),
            cancel: cancel_url.to_owned(),
            payload: Some(payload.clone()),
            ..RegisterBranch::default()
        };
        self.client.register_branch(&self.gid, &register).await?;
        let sent = self
            .http
            .post(try_url)
            .query(&[
                ("gid", self.gid.as_str()),
                ("trans_type", "tcc"),
                ("branch_id", &branch_id),
                ("op", "try"),
            ])
            .header("dtx-gid", &self.gid)
            .header("dtx-trans-type", "tcc")
            .header("dtx-branch-id", &branch_id)
            .header("dtx-op", "try")
            .json(&payload)
            .send()
            .await;
        match sent {
            Ok(res) if res.status().is_success() => Ok(()),
            Ok(res) if res.status().as_u16() == 409 => Err(TccError::Refused {
                branch_id,
                detail: res.text().await.unwrap_or_default(),
            }),
            Ok(res) => Err(TccError::TryFailed {
                branch_id,
                detail: format!("HTTP {}", res.status()),
            }),
            Err(e) => Err(TccError::TryFailed {
                branch_id,
                detail: e.to_string(),
            }),
        }
    }
}
