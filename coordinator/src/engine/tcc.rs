//! TCC: the initiator runs every try itself; the coordinator runs phase 2 — every confirm
//! after `submit`, every cancel (last registered first) after `abort` or when
//! `timeout_to_fail` passes before `submit`.
//!
//! A submitted TCC never moves to `aborting`, and an aborting one never to `submitted`, so
//! no confirm can follow a cancel and no cancel a confirm.

use dtx::{GlobalStatus, Op, OpStatus};

use super::{OpState, Plan, TxState, due, phase2_failure};

pub(super) fn plan(tx: &TxState, ops: &[OpState], now: i64) -> Plan {
    match tx.status {
        GlobalStatus::Prepared => match tx.timeout_at {
            Some(t) if t <= now => cancel_all(
                ops,
                now,
                Some(format!("timeout_to_fail passed at {t} before submit")),
            ),
            timeout => Plan {
                wake_at: timeout,
                ..Plan::stay(GlobalStatus::Prepared)
            },
        },
        GlobalStatus::Submitted => confirm_all(ops, now),
        GlobalStatus::Aborting => cancel_all(ops, now, None),
        status => Plan::stay(status),
    }
}

fn confirm_all(ops: &[OpState], now: i64) -> Plan {
    let mut plan = Plan::stay(GlobalStatus::Submitted);
    if let Some(attention) = phase2_failure(ops, |op| op == Op::Confirm) {
        plan.attention = Some(attention);
        return plan;
    }
    let confirms = || {
        ops.iter()
            .enumerate()
            .filter(|(_, o)| o.op == Op::Confirm)
            .map(|(i, _)| i)
    };
    if confirms().all(|i| ops[i].status == OpStatus::Succeeded) {
        plan.status = GlobalStatus::Succeeded;
        return plan;
    }
    (plan.calls, plan.wake_at) = due(ops, confirms(), now);
    plan
}

fn cancel_all(ops: &[OpState], now: i64, reason: Option<String>) -> Plan {
    let mut plan = Plan {
        rollback_reason: reason,
        ..Plan::stay(GlobalStatus::Aborting)
    };
    if let Some(attention) = phase2_failure(ops, |op| op == Op::Cancel) {
        plan.attention = Some(attention);
        return plan;
    }
    // Reverse registration order, one at a time: the last registered branch is undone first.
    let next = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.op == Op::Cancel && o.status != OpStatus::Succeeded)
        .max_by_key(|(_, o)| o.seq)
        .map(|(i, _)| i);
    match next {
        None => plan.status = GlobalStatus::Failed,
        Some(i) => (plan.calls, plan.wake_at) = due(ops, [i], now),
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::super::sim::{Answer, Sim};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn submit_confirms_every_branch() {
        let mut s = Sim::tcc(3);
        s.tx.status = GlobalStatus::Submitted;
        assert_eq!(s.run(|_| Answer::Success), GlobalStatus::Succeeded);
        assert_eq!(s.calls_of(Op::Confirm), vec!["01", "02", "03"]);
        assert!(s.calls_of(Op::Cancel).is_empty());
    }

    #[test]
    fn abort_cancels_in_reverse_registration_order() {
        let mut s = Sim::tcc(3);
        s.tx.status = GlobalStatus::Aborting;
        assert_eq!(s.run(|_| Answer::Success), GlobalStatus::Failed);
        assert_eq!(s.calls_of(Op::Cancel), vec!["03", "02", "01"]);
    }

    #[test]
    fn timeout_before_submit_cancels() {
        let mut s = Sim::tcc(2);
        s.tx.timeout_at = Some(35_000);
        let first = plan(&s.tx, &s.ops, 1_000);
        assert_eq!(
            (first.status, first.wake_at),
            (GlobalStatus::Prepared, Some(35_000))
        );
        assert_eq!(s.run(|_| Answer::Success), GlobalStatus::Failed);
        assert_eq!(s.calls_of(Op::Cancel), vec!["02", "01"]);
        assert!(s.now >= 35_000);
    }

    #[test]
    fn empty_tcc_finishes() {
        let mut s = Sim::tcc(0);
        s.tx.status = GlobalStatus::Submitted;
        assert_eq!(s.run(|_| Answer::Success), GlobalStatus::Succeeded);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn phase_two_never_mixes_confirm_and_cancel(
            n in 0usize..6,
            how in 0u8..3,
            answers in proptest::collection::vec(0u8..6, 32),
        ) {
            let mut s = Sim::tcc(n);
            s.tx.timeout_at = Some(10_000);
            match how {
                0 => s.tx.status = GlobalStatus::Submitted,
                1 => s.tx.status = GlobalStatus::Aborting,
                _ => {} // the initiator vanished: the timeout aborts
            }
            let mut k = 0;
            let end = s.run(|_| {
                let a = answers[k % answers.len()];
                k += 1;
                match a { 0 | 1 => Answer::Transient, 2 => Answer::Ongoing, _ => Answer::Success }
            });
            let confirms = s.calls_of(Op::Confirm);
            let cancels = s.calls_of(Op::Cancel);
            prop_assert!(confirms.is_empty() || cancels.is_empty());
            match how {
                0 => prop_assert_eq!(end, GlobalStatus::Succeeded),
                _ => prop_assert_eq!(end, GlobalStatus::Failed),
            }
            // Cancels in non-increasing branch order: the reverse of registration.
            let mut last_done = usize::MAX;
            for (b, answer) in s.log.iter().filter(|c| c.op == Op::Cancel).map(|c| (c.seq as usize, c.answer)) {
                prop_assert!(b <= last_done);
                if answer == Answer::Success { last_done = b; }
            }
        }
    }
}
