//! XA / two-phase commit: each participant prepares its own local transaction (PostgreSQL
//! `PREPARE TRANSACTION`, MySQL `XA PREPARE`) and registers its branch; the coordinator
//! runs phase 2 — `commit` on every branch after `submit`, `rollback` on every branch after
//! `abort` or when `timeout_to_fail` passes before `submit`.
//!
//! The decision (the move to `submitted` or `aborting`) is written before any phase-2
//! call, so a coordinator that dies in phase 2 resumes it. A participant answers SUCCESS
//! for a transaction it no longer knows ("unknown xid"): it was committed or rolled back.

use dtx::{GlobalStatus, Op, OpStatus};

use super::{OpState, Plan, TxState, due, phase2_failure};

pub(super) fn plan(tx: &TxState, ops: &[OpState], now: i64) -> Plan {
    match tx.status {
        GlobalStatus::Prepared => match tx.timeout_at {
            Some(t) if t <= now => all(
                ops,
                now,
                GlobalStatus::Aborting,
                Op::Rollback,
                Some(format!("timeout_to_fail passed at {t} before submit")),
            ),
            timeout => Plan {
                wake_at: timeout,
                ..Plan::stay(GlobalStatus::Prepared)
            },
        },
        GlobalStatus::Submitted => all(ops, now, GlobalStatus::Submitted, Op::Commit, None),
        GlobalStatus::Aborting => all(ops, now, GlobalStatus::Aborting, Op::Rollback, None),
        status => Plan::stay(status),
    }
}

/// Phase 2 on every branch at once: branches are independent local transactions.
fn all(ops: &[OpState], now: i64, status: GlobalStatus, op: Op, reason: Option<String>) -> Plan {
    let mut plan = Plan {
        rollback_reason: reason,
        ..Plan::stay(status)
    };
    if let Some(attention) = phase2_failure(ops, |o| o == op) {
        plan.attention = Some(attention);
        return plan;
    }
    let mine = || {
        ops.iter()
            .enumerate()
            .filter(move |(_, o)| o.op == op)
            .map(|(i, _)| i)
    };
    if mine().all(|i| ops[i].status == OpStatus::Succeeded) {
        plan.status = if op == Op::Commit {
            GlobalStatus::Succeeded
        } else {
            GlobalStatus::Failed
        };
        return plan;
    }
    (plan.calls, plan.wake_at) = due(ops, mine(), now);
    plan
}

#[cfg(test)]
mod tests {
    use super::super::sim::{Answer, Sim};
    use super::*;

    #[test]
    fn submit_commits_every_branch_and_abort_rolls_back() {
        let mut s = Sim::xa(3);
        s.tx.status = GlobalStatus::Submitted;
        assert_eq!(s.run(|_| Answer::Success), GlobalStatus::Succeeded);
        assert_eq!(s.rounds[0].len(), 3, "commits go out together");
        assert!(s.calls_of(Op::Rollback).is_empty());

        let mut s = Sim::xa(2);
        s.tx.status = GlobalStatus::Aborting;
        assert_eq!(s.run(|_| Answer::Success), GlobalStatus::Failed);
        assert!(s.calls_of(Op::Commit).is_empty());
    }

    #[test]
    fn timeout_before_submit_rolls_back_and_failures_need_attention() {
        let mut s = Sim::xa(2);
        s.tx.timeout_at = Some(1_000);
        assert_eq!(s.run(|_| Answer::Success), GlobalStatus::Failed);
        assert_eq!(s.calls_of(Op::Rollback).len(), 2);

        let mut s = Sim::xa(1);
        s.tx.status = GlobalStatus::Submitted;
        assert_eq!(s.run(|_| Answer::Failure), GlobalStatus::Submitted);
        assert!(s.attention.unwrap().contains("commit answered FAILURE"));
    }
}
