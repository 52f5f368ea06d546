//! The pure decision logic: given a transaction and its branch ops, what happens next.
//!
//! Nothing here does IO or reads a clock; `now` and randomness come in as arguments. The
//! driver ([`crate::driver`]) loads a transaction, asks [`plan`] what to do, calls the
//! participants, folds the answers in with [`apply_outcome`], and persists the result.
//!
//! One mode per file: [`saga`], [`tcc`] and [`xa`], behind [`plan`].

pub mod msg;
pub mod saga;
pub mod tcc;
pub mod xa;

use dtx::{GlobalStatus, Op, OpStatus, TransType};
use serde::{Deserialize, Serialize};

/// Retry and timeout rules of one transaction, resolved from the request and the
/// coordinator's defaults when the transaction is created, and stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Base of the exponential backoff, and the wait after an ONGOING answer.
    pub retry_interval_ms: u64,
    /// Cap of the backoff.
    pub retry_cap_ms: u64,
    /// Calls of one op after which the transaction needs attention.
    pub retry_limit: u32,
    /// Age after which a transaction still retrying needs attention.
    pub max_age_ms: u64,
    /// Timeout of one participant call.
    pub request_timeout_ms: u64,
    /// Most of this transaction's branch ops called at once (a wide concurrent saga or
    /// TCC does not fan out all its calls together); 0: no limit.
    #[serde(default)]
    pub max_parallel_calls: u32,
}

/// The state of a global transaction, as far as decisions need it.
#[derive(Debug, Clone, PartialEq)]
pub struct TxState {
    /// Mode.
    pub trans_type: TransType,
    /// Current status.
    pub status: GlobalStatus,
    /// Creation time (ms since the Unix epoch, database clock).
    pub created_at: i64,
    /// When `timeout_to_fail` passes, if it applies.
    pub timeout_at: Option<i64>,
    /// Set when the coordinator stopped retrying and waits for an operator.
    pub needs_attention: Option<String>,
    /// Retry rules.
    pub policy: Policy,
    /// Saga only: for each step, the steps it waits for. `None` means sequential.
    pub saga_after: Option<Vec<Vec<usize>>>,
}

/// One branch op.
#[derive(Debug, Clone, PartialEq)]
pub struct OpState {
    /// Branch id.
    pub branch_id: String,
    /// Which op.
    pub op: Op,
    /// Saga: the step index; TCC: the registration order.
    pub seq: u32,
    /// Status.
    pub status: OpStatus,
    /// Calls made so far.
    pub attempts: u32,
    /// Earliest time of the next call (0: at once).
    pub next_at: i64,
    /// The last transient error.
    pub last_error: Option<String>,
    /// Per-op override of the retry limit.
    pub retry_limit: Option<u32>,
}

impl OpState {
    /// A pending op that has not been called yet.
    pub fn new(branch_id: impl Into<String>, op: Op, seq: u32) -> Self {
        Self {
            branch_id: branch_id.into(),
            op,
            seq,
            status: OpStatus::Pending,
            attempts: 0,
            next_at: 0,
            last_error: None,
            retry_limit: None,
        }
    }
}

/// What the driver must do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The status the transaction must be in (persist it before making the calls when it
    /// differs from the stored one).
    pub status: GlobalStatus,
    /// Indexes (into the ops slice) of the ops to call now.
    pub calls: Vec<usize>,
    /// When to look again if nothing can be called now (`None`: nothing to wait for).
    pub wake_at: Option<i64>,
    /// Set when the transaction must stop and wait for an operator.
    pub attention: Option<String>,
    /// Why the transaction moves to `aborting`, when this plan moves it there.
    pub rollback_reason: Option<String>,
}

impl Plan {
    fn stay(status: GlobalStatus) -> Self {
        Self {
            status,
            calls: Vec::new(),
            wake_at: None,
            attention: None,
            rollback_reason: None,
        }
    }
}

/// The answer of one participant call, classified per DESIGN §4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: done.
    Success,
    /// 409: business refusal.
    Failure(String),
    /// 425: not finished yet, ask again after the retry interval.
    Ongoing,
    /// Anything else: retry with backoff.
    Transient(String),
}

/// Decides what to do with `tx` at time `now`.
pub fn plan(tx: &TxState, ops: &[OpState], now: i64) -> Plan {
    if tx.status.is_final() {
        return Plan::stay(tx.status);
    }
    if let Some(reason) = &tx.needs_attention {
        // Parked: only an operator's action (which clears the flag) sets it going again.
        let mut plan = Plan::stay(tx.status);
        plan.attention = Some(reason.clone());
        return plan;
    }
    let mut plan = match tx.trans_type {
        TransType::Saga => saga::plan(tx, ops, now),
        TransType::Tcc => tcc::plan(tx, ops, now),
        TransType::Xa => xa::plan(tx, ops, now),
        TransType::Msg => msg::plan(tx, ops, now),
    };
    enforce_budget(tx, ops, now, &mut plan);
    plan
}

/// Turns due calls whose budget is spent into a `needs_attention` stop.
fn enforce_budget(tx: &TxState, ops: &[OpState], now: i64, plan: &mut Plan) {
    let age = now.saturating_sub(tx.created_at);
    for &i in &plan.calls {
        let op = &ops[i];
        let limit = op.retry_limit.unwrap_or(tx.policy.retry_limit);
        let last = op.last_error.as_deref().unwrap_or("none");
        let reason = if op.attempts >= limit {
            Some(format!(
                "retry budget spent: branch {} {} called {} times (limit {limit}); last error: {last}",
                op.branch_id, op.op, op.attempts
            ))
        } else if op.attempts > 0 && age > tx.policy.max_age_ms as i64 {
            Some(format!(
                "age budget spent: transaction is {} s old (limit {} s) and branch {} {} still retrying; last error: {last}",
                age / 1000,
                tx.policy.max_age_ms / 1000,
                op.branch_id,
                op.op
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            plan.calls.clear();
            plan.wake_at = None;
            plan.attention = Some(reason);
            return;
        }
    }
}

/// A phase-2 op that answered FAILURE cannot be rolled back: an operator must look.
fn phase2_failure(ops: &[OpState], which: impl Fn(Op) -> bool) -> Option<String> {
    ops.iter()
        .find(|o| which(o.op) && o.status == OpStatus::Failed)
        .map(|o| {
            format!(
                "branch {} {} answered FAILURE, which phase 2 cannot honour: {}",
                o.branch_id,
                o.op,
                o.last_error.as_deref().unwrap_or("no detail")
            )
        })
}

/// Splits pending ops into those due now and the earliest wake-up of the others.
fn due(
    ops: &[OpState],
    candidates: impl IntoIterator<Item = usize>,
    now: i64,
) -> (Vec<usize>, Option<i64>) {
    let mut calls = Vec::new();
    let mut wake: Option<i64> = None;
    for i in candidates {
        let op = &ops[i];
        if op.status != OpStatus::Pending {
            continue;
        }
        if op.next_at <= now {
            calls.push(i);
        } else {
            wake = Some(wake.map_or(op.next_at, |w| w.min(op.next_at)));
        }
    }
    (calls, wake)
}

/// Exponential backoff with full jitter: a uniform delay in `[0, min(cap, base·2^(n-1))]`
/// where `n` is the number of calls made so far and `jitter` is uniform in `[0, 1)`.
pub fn backoff_ms(attempts: u32, base_ms: u64, cap_ms: u64, jitter: f64) -> u64 {
    let exp = attempts.saturating_sub(1).min(32);
    let ceiling = base_ms.saturating_mul(1u64 << exp).min(cap_ms);
    (ceiling as f64 * jitter.clamp(0.0, 1.0)) as u64
}

/// Folds a participant's answer into the op it answered for.
pub fn apply_outcome(op: &mut OpState, outcome: &Outcome, now: i64, policy: &Policy, jitter: f64) {
    op.attempts = op.attempts.saturating_add(1);
    match outcome {
        Outcome::Success => {
            op.status = OpStatus::Succeeded;
            op.next_at = 0;
        }
        Outcome::Failure(detail) => {
            op.status = OpStatus::Failed;
            op.next_at = 0;
            op.last_error = Some(detail.clone());
        }
        Outcome::Ongoing => {
            op.next_at = now + policy.retry_interval_ms as i64;
            op.last_error = Some("participant answered ONGOING".into());
        }
        Outcome::Transient(err) => {
            op.next_at = now
                + backoff_ms(
                    op.attempts,
                    policy.retry_interval_ms,
                    policy.retry_cap_ms,
                    jitter,
                ) as i64;
            op.last_error = Some(err.clone());
        }
    }
}

#[cfg(test)]
pub(crate) mod sim;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_grows() {
        assert_eq!(backoff_ms(1, 100, 60_000, 0.999_999), 99);
        assert_eq!(backoff_ms(3, 100, 60_000, 0.5), 200);
        assert_eq!(backoff_ms(40, 100, 60_000, 0.5), 30_000);
        assert_eq!(backoff_ms(u32::MAX, u64::MAX, 60_000, 1.0), 60_000);
        assert_eq!(backoff_ms(2, 100, 60_000, 0.0), 0);
    }

    #[test]
    fn outcome_application() {
        let policy = sim::policy();
        let mut op = OpState::new("01", Op::Action, 0);
        apply_outcome(
            &mut op,
            &Outcome::Transient("HTTP 503".into()),
            1000,
            &policy,
            0.5,
        );
        assert_eq!((op.status, op.attempts), (OpStatus::Pending, 1));
        assert!(op.next_at >= 1000);
        apply_outcome(&mut op, &Outcome::Ongoing, 2000, &policy, 0.5);
        assert_eq!(op.next_at, 2000 + policy.retry_interval_ms as i64);
        apply_outcome(&mut op, &Outcome::Success, 3000, &policy, 0.5);
        assert_eq!(
            (op.status, op.attempts, op.next_at),
            (OpStatus::Succeeded, 3, 0)
        );
    }
}
