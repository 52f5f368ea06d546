//! Request and response bodies of the coordinator's native API (`/api/v1/...`).
//!
//! Durations on the native API are in milliseconds and named `*_ms`; times are RFC 3339
//! strings in UTC with millisecond precision, taken from the coordinator database's clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{GlobalStatus, Op, OpStatus, TransType};

/// Options of a global transaction. Every field is optional; the coordinator's configured
/// defaults fill what is left out, and the resolved values are stored with the transaction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxOptions {
    /// Past this age a transaction that has not been submitted (TCC) or has not finished
    /// its forward ops (saga) is aborted. TCC default: 35 s; saga default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_to_fail_ms: Option<u64>,
    /// Base of the exponential backoff between retries of a branch op, and the wait after
    /// an ONGOING answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_interval_ms: Option<u64>,
    /// Cap of the exponential backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_cap_ms: Option<u64>,
    /// Calls of one branch op after which the transaction is flagged `needs_attention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_limit: Option<u32>,
    /// Age after which a transaction still retrying is flagged `needs_attention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// Timeout of one call to a participant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// Most of this transaction's branch ops called at once (default: no limit besides the
    /// coordinator's per-participant limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_calls: Option<u32>,
    /// Extra headers sent with every branch call.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub branch_headers: BTreeMap<String, String>,
}

/// One step of a saga.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaStep {
    /// URL of the forward action.
    pub action: String,
    /// URL of the compensation; a step without one needs no undo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<String>,
    /// JSON body sent to both action and compensation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// Concurrent sagas only: indexes (0-based) of the steps this one waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<usize>,
    /// Per-step override of [`TxOptions::retry_limit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_limit: Option<u32>,
    /// Per-step override of [`TxOptions::request_timeout_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
}

/// One step of a message: an HTTP call or a Kafka publish (`kafka://TOPIC[?key=KEY]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsgStep {
    /// `http://...` or `kafka://TOPIC[?key=KEY]` (default key: the gid).
    pub action: String,
    /// JSON body of the call, or value of the Kafka record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// Per-step override of [`TxOptions::retry_limit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_limit: Option<u32>,
    /// Per-step override of [`TxOptions::request_timeout_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
}

/// `POST /api/v1/msgs`: store a half message (`prepare: true`; delivered on submit, or
/// after a check-back at `query_prepared`) or a message delivered at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutMsg {
    /// The gid; minted by the coordinator when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// The steps, delivered in order.
    pub steps: Vec<MsgStep>,
    /// Where the coordinator checks back (GET) when neither submit nor abort arrives
    /// before `timeout_to_fail_ms`; required with `prepare`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_prepared: Option<String>,
    /// Store it invisibly until `submit` (a half message).
    #[serde(default)]
    pub prepare: bool,
    /// Options.
    #[serde(default)]
    pub options: TxOptions,
    /// Answer only when final (not with `prepare`).
    #[serde(default)]
    pub wait_result: bool,
    /// Deliver no sooner than this many ms from now (not with `prepare`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// `POST /api/v1/sagas`: submit a whole saga.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitSaga {
    /// The gid; minted by the coordinator when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// The steps, in order.
    pub steps: Vec<SagaStep>,
    /// Run steps as their `after` lists allow instead of one after the other.
    #[serde(default)]
    pub concurrent: bool,
    /// Transaction options.
    #[serde(default)]
    pub options: TxOptions,
    /// Answer only when the saga reached a final state (or the wait timed out).
    #[serde(default)]
    pub wait_result: bool,
}

/// `POST /api/v1/tcc` and `POST /api/v1/xa`: prepare a TCC or XA transaction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareTcc {
    /// The gid; minted by the coordinator when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// Transaction options.
    #[serde(default)]
    pub options: TxOptions,
}

/// `POST /api/v1/transactions/{gid}/branches`: register a TCC branch before calling its
/// try (`confirm` and `cancel`), or an XA branch once its local transaction is prepared
/// (`url`, called with `op=commit` or `op=rollback`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBranch {
    /// The branch id (`01`, `02`, ...), unique within the transaction.
    pub branch_id: String,
    /// TCC: URL of the confirm op.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub confirm: String,
    /// TCC: URL of the cancel op.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cancel: String,
    /// XA: URL of phase 2.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// JSON body sent to confirm and cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// `POST /api/v1/transactions/{gid}/submit` and `/abort`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finish {
    /// Answer only when the transaction reached a final state (or the wait timed out).
    #[serde(default)]
    pub wait_result: bool,
    /// Why the initiator aborts (kept as the rollback reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to every operation that creates or moves a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The transaction's gid.
    pub gid: String,
    /// Its status after the operation (final when `wait_result` was asked and reached).
    pub status: GlobalStatus,
}

/// `POST /api/v1/gids`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewGid {
    /// A fresh, time-ordered gid.
    pub gid: String,
}

/// One branch op of a transaction, as shown by `GET /api/v1/transactions/{gid}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchView {
    /// Branch id.
    pub branch_id: String,
    /// Which op of the branch.
    pub op: Op,
    /// URL called.
    pub target: String,
    /// Status of the op.
    pub status: OpStatus,
    /// Calls made so far.
    pub attempts: u32,
    /// The last transient error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next call is due, if it is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// When the op was last updated.
    pub updated_at: String,
}

/// A global transaction, as shown by `GET /api/v1/transactions/{gid}` and listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionView {
    /// The gid.
    pub gid: String,
    /// Mode.
    pub trans_type: TransType,
    /// Status.
    pub status: GlobalStatus,
    /// Why the coordinator stopped retrying on its own and needs an operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_attention: Option<String>,
    /// Why it was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_reason: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// When the coordinator will look at it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// The branch ops (empty in listings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<BranchView>,
}

/// `GET /api/v1/transactions`: one page of a listing, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionPage {
    /// The transactions of this page.
    pub transactions: Vec<TransactionView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The body of every 4xx/5xx answer of the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
