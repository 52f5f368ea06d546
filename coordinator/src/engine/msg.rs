//! Half messages (RocketMQ-style, DESIGN §3): `prepare` stores the message where no
//! consumer sees it; `submit` delivers every step, in order; `abort` drops it. When neither
//! arrives before `timeout_to_fail`, the coordinator checks back with the initiator through
//! the `msg` op of branch `00` (its `query_prepared` URL): SUCCESS → deliver, FAILURE →
//! failed, ONGOING → ask again later, errors → back off, budget spent → needs attention.
//!
//! Delivery is at-least-once and cannot be undone: a step answering FAILURE (or a message
//! whose check-back is impossible) stops for an operator rather than being dropped.

use dtx::{GlobalStatus, Op, OpStatus};

use super::{OpState, Plan, TxState, due};

/// The branch id of the check-back op.
pub const CHECK_BACK_BRANCH: &str = "00";

pub(super) fn plan(tx: &TxState, ops: &[OpState], now: i64) -> Plan {
    let check = ops.iter().position(|o| o.op == Op::Msg);
    match tx.status {
        GlobalStatus::Prepared => {
            // The check-back's answer is the initiator's decision.
            if let Some(i) = check {
                match ops[i].status {
                    OpStatus::Succeeded => return deliver(ops, now),
                    OpStatus::Failed => {
                        return Plan {
                            rollback_reason: Some(format!(
                                "check-back: the initiator's local transaction rolled back ({})",
                                ops[i].last_error.as_deref().unwrap_or("FAILURE")
                            )),
                            ..Plan::stay(GlobalStatus::Failed)
                        };
                    }
                    OpStatus::Pending => {}
                }
            }
            match (tx.timeout_at, check) {
                (Some(t), Some(i)) if t <= now => {
                    let (calls, wake_at) = due(ops, [i], now);
                    Plan {
                        calls,
                        wake_at,
                        ..Plan::stay(GlobalStatus::Prepared)
                    }
                }
                (Some(t), None) if t <= now => Plan {
                    attention: Some(format!(
                        "timeout_to_fail passed at {t} before submit, and the message has no query_prepared URL to check back"
                    )),
                    ..Plan::stay(GlobalStatus::Prepared)
                },
                (timeout, _) => Plan {
                    wake_at: timeout,
                    ..Plan::stay(GlobalStatus::Prepared)
                },
            }
        }
        GlobalStatus::Submitted => deliver(ops, now),
        // Nothing was delivered before the decision: nothing to undo.
        GlobalStatus::Aborting => Plan::stay(GlobalStatus::Failed),
        status => Plan::stay(status),
    }
}

/// Delivers the steps one after the other (a later step may depend on an earlier one
/// being visible, and records to one key keep their order).
fn deliver(ops: &[OpState], now: i64) -> Plan {
    let mut plan = Plan::stay(GlobalStatus::Submitted);
    let mut steps: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].op == Op::Action)
        .collect();
    steps.sort_by_key(|&i| ops[i].seq);
    for i in steps {
        match ops[i].status {
            OpStatus::Succeeded => continue,
            OpStatus::Failed => {
                plan.attention = Some(format!(
                    "step {} answered FAILURE; a committed message cannot be taken back: {}",
                    ops[i].branch_id,
                    ops[i].last_error.as_deref().unwrap_or("no detail")
                ));
                return plan;
            }
            OpStatus::Pending => {
                (plan.calls, plan.wake_at) = due(ops, [i], now);
                return plan;
            }
        }
    }
    plan.status = GlobalStatus::Succeeded;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sim::policy;
    use crate::engine::{Outcome, apply_outcome, plan as engine_plan};
    use dtx::TransType;

    fn tx(status: GlobalStatus, timeout_at: Option<i64>) -> TxState {
        TxState {
            trans_type: TransType::Msg,
            status,
            created_at: 0,
            timeout_at,
            needs_attention: None,
            policy: policy(),
            saga_after: None,
        }
    }

    fn message() -> Vec<OpState> {
        vec![
            OpState::new(CHECK_BACK_BRANCH, Op::Msg, 0),
            OpState::new("01", Op::Action, 0),
            OpState::new("02", Op::Action, 1),
        ]
    }

    #[test]
    fn submitted_delivers_in_order_then_succeeds() {
        let t = tx(GlobalStatus::Submitted, Some(100));
        let mut ops = message();
        let p = engine_plan(&t, &ops, 10);
        assert_eq!(
            p.calls,
            vec![1],
            "the check-back op is not called once submitted"
        );
        apply_outcome(&mut ops[1], &Outcome::Success, 10, &t.policy, 0.5);
        assert_eq!(engine_plan(&t, &ops, 10).calls, vec![2]);
        apply_outcome(&mut ops[2], &Outcome::Success, 10, &t.policy, 0.5);
        assert_eq!(engine_plan(&t, &ops, 10).status, GlobalStatus::Succeeded);
    }

    #[test]
    fn a_prepared_message_waits_then_checks_back() {
        let t = tx(GlobalStatus::Prepared, Some(100));
        let mut ops = message();
        let p = engine_plan(&t, &ops, 50);
        assert!(p.calls.is_empty(), "invisible until submit or timeout");
        assert_eq!(p.wake_at, Some(100));
        let p = engine_plan(&t, &ops, 100);
        assert_eq!(p.calls, vec![0], "check back");
        apply_outcome(&mut ops[0], &Outcome::Ongoing, 100, &t.policy, 0.5);
        let p = engine_plan(&t, &ops, 100);
        assert!(
            p.calls.is_empty() && p.wake_at.is_some(),
            "ONGOING: ask later"
        );
        apply_outcome(&mut ops[0], &Outcome::Success, 200, &t.policy, 0.5);
        let p = engine_plan(&t, &ops, 200);
        assert_eq!((p.status, p.calls), (GlobalStatus::Submitted, vec![1]));
    }

    #[test]
    fn a_rolled_back_initiator_fails_the_message_without_delivery() {
        let t = tx(GlobalStatus::Prepared, Some(100));
        let mut ops = message();
        apply_outcome(
            &mut ops[0],
            &Outcome::Failure("rolled back".into()),
            100,
            &t.policy,
            0.5,
        );
        let p = engine_plan(&t, &ops, 100);
        assert_eq!(p.status, GlobalStatus::Failed);
        assert!(p.calls.is_empty());
        assert!(p.rollback_reason.unwrap().contains("rolled back"));
        let p = engine_plan(&tx(GlobalStatus::Aborting, None), &message(), 0);
        assert_eq!((p.status, p.calls.len()), (GlobalStatus::Failed, 0));
    }

    #[test]
    fn failures_and_spent_budgets_wait_for_an_operator() {
        let t = tx(GlobalStatus::Submitted, None);
        let mut ops = message();
        apply_outcome(
            &mut ops[1],
            &Outcome::Failure("nope".into()),
            0,
            &t.policy,
            0.5,
        );
        let p = engine_plan(&t, &ops, 0);
        assert!(p.attention.unwrap().contains("cannot be taken back"));
        assert_eq!(p.status, GlobalStatus::Submitted);

        let t = tx(GlobalStatus::Prepared, Some(0));
        let mut ops = message();
        for _ in 0..t.policy.retry_limit {
            apply_outcome(
                &mut ops[0],
                &Outcome::Transient("down".into()),
                0,
                &t.policy,
                0.0,
            );
        }
        let p = engine_plan(&t, &ops, 10_000_000);
        assert!(
            p.attention.unwrap().contains("retry budget spent"),
            "check-back budget"
        );
        let p = engine_plan(&t, &[OpState::new("01", Op::Action, 0)], 10);
        assert!(p.attention.unwrap().contains("no query_prepared"));
    }
}
