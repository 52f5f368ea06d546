//! Sagas in code: a builder that submits to the coordinator, and the participant trait
//! for a saga step's action and compensation.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{Accepted, SagaStep, SubmitSaga, TxOptions};
use crate::client::{Client, ClientError};
use crate::context::BranchContext;
use crate::result::BranchResult;

/// A saga step's participant: the action and the compensation that undoes it.
/// Mount it with [`crate::axum::saga_router`]; guard both with [`crate::barrier::call`].
#[async_trait::async_trait]
pub trait SagaParticipant: Send + Sync + 'static {
    /// The JSON body of both ops.
    type Request: DeserializeOwned + Send + 'static;
    /// Do the step (409 / [`crate::BranchError::Failure`] rolls the saga back).
    async fn action(&self, ctx: &BranchContext, req: Self::Request) -> BranchResult;
    /// Undo the step (nothing, if the action never ran). Must not refuse.
    async fn compensate(&self, ctx: &BranchContext, req: Self::Request) -> BranchResult;
}

/// Builds a saga and submits it.
///
/// ```no_run
/// # async fn demo() -> Result<(), dtx::SagaError> {
/// use std::time::Duration;
/// let client = dtx::Client::new("http://127.0.0.1:36789");
/// let order = serde_json::json!({"order": 7, "sku": "A1", "qty": 2});
/// let accepted = dtx::Saga::new()
///     .step("http://127.0.0.1:8081/order", &order)?
///     .step("http://127.0.0.1:8082/stock", &order)?
///     .step("http://127.0.0.1:8083/payment", &order)?
///     .retry_interval(Duration::from_millis(500))
///     .wait_result()
///     .submit(&client)
///     .await?;
/// println!("{} is {}", accepted.gid, accepted.status);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Saga {
    request: SubmitSaga,
}

/// Why a saga could not be built or submitted.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// A payload could not be serialised.
    #[error("payload of step {step}: {source}")]
    Payload {
        /// Index of the step.
        step: usize,
        /// The serialisation error.
        #[source]
        source: serde_json::Error,
    },
    /// The coordinator refused or could not be reached.
    #[error(transparent)]
    Coordinator(#[from] ClientError),
}

impl Saga {
    /// An empty saga with the coordinator's default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses this gid instead of one minted by the coordinator (a retried submit with the
    /// same gid is idempotent).
    pub fn gid(mut self, gid: impl Into<String>) -> Self {
        self.request.gid = Some(gid.into());
        self
    }

    /// Adds a step mounted with [`crate::axum::saga_router`] at `base_url`: action at
    /// `{base_url}/action`, compensation at `{base_url}/compensate`.
    pub fn step<P: Serialize + ?Sized>(
        self,
        base_url: &str,
        payload: &P,
    ) -> Result<Self, SagaError> {
        let base = base_url.trim_end_matches('/');
        self.step_at(
            &format!("{base}/action"),
            Some(&format!("{base}/compensate")),
            payload,
        )
    }

    /// Adds a step with explicit URLs (no compensation: nothing to undo).
    pub fn step_at<P: Serialize + ?Sized>(
        mut self,
        action: &str,
        compensate: Option<&str>,
        payload: &P,
    ) -> Result<Self, SagaError> {
        let step = self.request.steps.len();
        let payload =
            serde_json::to_value(payload).map_err(|source| SagaError::Payload { step, source })?;
        self.request.steps.push(SagaStep {
            action: action.to_owned(),
            compensate: compensate.map(str::to_owned),
            payload: Some(payload),
            ..SagaStep::default()
        });
        Ok(self)
    }

    /// Makes the last added step wait for the steps at these indexes, and the saga
    /// concurrent (steps without dependencies start together).
    pub fn after(mut self, steps: impl IntoIterator<Item = usize>) -> Self {
        self.request.concurrent = true;
        if let Some(last) = self.request.steps.last_mut() {
            last.after.extend(steps);
        }
        self
    }

    /// Runs steps without dependencies at once instead of one after the other.
    pub fn concurrent(mut self) -> Self {
        self.request.concurrent = true;
        self
    }

    /// Rolls back if the actions have not all succeeded within `d`.
    pub fn timeout_to_fail(mut self, d: Duration) -> Self {
        self.request.options.timeout_to_fail_ms = Some(d.as_millis() as u64);
        self
    }

    /// Base of the backoff between retries.
    pub fn retry_interval(mut self, d: Duration) -> Self {
        self.request.options.retry_interval_ms = Some(d.as_millis() as u64);
        self
    }

    /// Calls of one op before the saga needs an operator.
    pub fn retry_limit(mut self, n: u32) -> Self {
        self.request.options.retry_limit = Some(n);
        self
    }

    /// Timeout of each participant call.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request.options.request_timeout_ms = Some(d.as_millis() as u64);
        self
    }

    /// A header sent with every branch call.
    pub fn branch_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request
            .options
            .branch_headers
            .insert(name.into(), value.into());
        self
    }

    /// Replaces all options at once.
    pub fn options(mut self, options: TxOptions) -> Self {
        self.request.options = options;
        self
    }

    /// Makes [`Saga::submit`] answer only once the saga is final.
    pub fn wait_result(mut self) -> Self {
        self.request.wait_result = true;
        self
    }

    /// The request that [`Saga::submit`] sends.
    pub fn request(&self) -> &SubmitSaga {
        &self.request
    }

    /// Submits the saga.
    pub async fn submit(&self, client: &Client) -> Result<Accepted, SagaError> {
        Ok(client.submit_saga(&self.request).await?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn builder_shapes_the_request() {
        let saga = Saga::new()
            .gid("g1")
            .step("http://a/order/", &serde_json::json!({"n": 1}))
            .unwrap()
            .step_at("http://b/pay", None, &5)
            .unwrap()
            .after([0])
            .branch_header("x-tenant", "t1")
            .wait_result();
        let r = saga.request();
        assert_eq!(r.gid.as_deref(), Some("g1"));
        assert_eq!(r.steps[0].action, "http://a/order/action");
        assert_eq!(
            r.steps[0].compensate.as_deref(),
            Some("http://a/order/compensate")
        );
        assert_eq!(r.steps[1].compensate, None);
        assert_eq!(r.steps[1].after, vec![0]);
        assert!(r.concurrent && r.wait_result);
        assert_eq!(
            r.options.branch_headers,
            BTreeMap::from([("x-tenant".to_string(), "t1".to_string())])
        );
    }
}
