//! Saga: actions in order (or as the dependency map allows); on a FAILURE answer, or when
//! `timeout_to_fail` passes, every step whose action may have run is compensated in
//! reverse (reverse dependency) order.

use dtx::{GlobalStatus, Op, OpStatus};

use super::{OpState, Plan, TxState, due, phase2_failure};

/// Where each step's action and compensation sit in the ops slice, and what each step
/// waits for.
struct Steps {
    action: Vec<Option<usize>>,
    compensate: Vec<Option<usize>>,
    after: Vec<Vec<usize>>,
}

impl Steps {
    fn index(tx: &TxState, ops: &[OpState]) -> Self {
        let n = ops.iter().map(|o| o.seq as usize + 1).max().unwrap_or(0);
        let after = (0..n)
            .map(|s| match &tx.saga_after {
                Some(after) => after.get(s).cloned().unwrap_or_default(),
                None if s == 0 => Vec::new(),
                None => vec![s - 1],
            })
            .collect();
        let mut steps = Self {
            action: vec![None; n],
            compensate: vec![None; n],
            after,
        };
        for (i, op) in ops.iter().enumerate() {
            match op.op {
                Op::Action => steps.action[op.seq as usize] = Some(i),
                Op::Compensate => steps.compensate[op.seq as usize] = Some(i),
                _ => {}
            }
        }
        steps
    }

    fn len(&self) -> usize {
        self.action.len()
    }

    fn action_status(&self, ops: &[OpState], step: usize) -> Option<OpStatus> {
        self.action[step].map(|i| ops[i].status)
    }

    /// For each step, whether its action may have been called: no step it (transitively)
    /// waits for has an action that answered FAILURE.
    fn may_have_run(&self, ops: &[OpState]) -> Vec<bool> {
        let n = self.len();
        let failed = |d: usize| self.action_status(ops, d) == Some(OpStatus::Failed);
        let mut ran: Vec<bool> = (0..n).map(|s| self.action[s].is_some()).collect();
        // Fixed point over the DAG: a step below a failed or never-run step never ran.
        let mut changed = true;
        while changed {
            changed = false;
            for s in 0..n {
                if ran[s]
                    && self.after[s]
                        .iter()
                        .any(|&d| d >= n || failed(d) || !ran[d])
                {
                    ran[s] = false;
                    changed = true;
                }
            }
        }
        ran
    }

    /// Whether every step that `step` waits for has a succeeded action, so that its own
    /// action may be (or may have been) called.
    fn eligible(&self, ops: &[OpState], step: usize) -> bool {
        self.action[step].is_some()
            && self.after[step]
                .iter()
                .all(|&d| d < self.len() && self.action_status(ops, d) == Some(OpStatus::Succeeded))
    }
}

pub(super) fn plan(tx: &TxState, ops: &[OpState], now: i64) -> Plan {
    let steps = Steps::index(tx, ops);
    match tx.status {
        GlobalStatus::Submitted => forward(tx, &steps, ops, now),
        GlobalStatus::Aborting => backward(&steps, ops, now, None),
        status => Plan::stay(status),
    }
}

fn forward(tx: &TxState, steps: &Steps, ops: &[OpState], now: i64) -> Plan {
    if let Some(failed) = ops
        .iter()
        .find(|o| o.op == Op::Action && o.status == OpStatus::Failed)
    {
        let reason = format!(
            "branch {} action answered FAILURE: {}",
            failed.branch_id,
            failed.last_error.as_deref().unwrap_or("no detail")
        );
        return backward(steps, ops, now, Some(reason));
    }
    let all_done =
        (0..steps.len()).all(|s| steps.action_status(ops, s) == Some(OpStatus::Succeeded));
    if all_done {
        return Plan::stay(GlobalStatus::Succeeded);
    }
    if let Some(t) = tx.timeout_at.filter(|&t| t <= now) {
        let reason = format!("timeout_to_fail passed at {t} before every action succeeded");
        return backward(steps, ops, now, Some(reason));
    }
    let runnable = (0..steps.len())
        .filter(|&s| steps.eligible(ops, s))
        .filter_map(|s| steps.action[s]);
    let (calls, wake) = due(ops, runnable, now);
    let wake_at = match (wake, tx.timeout_at) {
        (Some(w), Some(t)) => Some(w.min(t)),
        (w, t) => w.or(t),
    };
    Plan {
        status: GlobalStatus::Submitted,
        calls,
        wake_at,
        attention: None,
        rollback_reason: None,
    }
}

fn backward(steps: &Steps, ops: &[OpState], now: i64, reason: Option<String>) -> Plan {
    let mut plan = Plan::stay(GlobalStatus::Aborting);
    plan.rollback_reason = reason;
    if let Some(attention) = phase2_failure(ops, |op| op == Op::Compensate) {
        plan.attention = Some(attention);
        return plan;
    }
    let n = steps.len();
    // A step is compensated when its action may have run. The stored statuses cannot say
    // for sure: an action's success is not written before the next step is called (it
    // rides with a later write), so a step whose predecessor looks pending may have run.
    // Only a step below a FAILED action is certain never to have run: a failure is written
    // before anything else is called.
    let ran = steps.may_have_run(ops);
    let need: Vec<bool> = (0..n)
        .map(|s| steps.compensate[s].is_some() && ran[s])
        .collect();
    let done = |s: usize| {
        !need[s] || steps.compensate[s].is_some_and(|i| ops[i].status == OpStatus::Succeeded)
    };
    // A compensation waits until every step that (transitively) waited for its step is
    // undone: propagate "blocked" from each pending dependent to what it waited for, to a
    // fixed point (a step that cannot have run has no dependents that can have).
    let mut blocked = vec![false; n];
    let mut changed = true;
    while changed {
        changed = false;
        for t in 0..n {
            let t_pending = (need[t] && !done(t)) || blocked[t];
            if !t_pending || !ran[t] {
                continue;
            }
            for &s in &steps.after[t] {
                if s < n && !blocked[s] {
                    blocked[s] = true;
                    changed = true;
                }
            }
        }
    }
    if (0..n).all(done) {
        plan.status = GlobalStatus::Failed;
        return plan;
    }
    let runnable = (0..n)
        .filter(|&s| need[s] && !done(s) && !blocked[s])
        .filter_map(|s| steps.compensate[s]);
    let (calls, wake) = due(ops, runnable, now);
    plan.calls = calls;
    plan.wake_at = wake;
    plan
}

#[cfg(test)]
mod tests {
    use super::super::sim::{self, Answer, Sim};
    use super::*;
    use proptest::prelude::*;

    fn saga(n: usize, after: Option<Vec<Vec<usize>>>) -> Sim {
        Sim::saga(n, after)
    }

    #[test]
    fn all_actions_succeed() {
        let mut s = saga(3, None);
        let end = s.run(|_| Answer::Success);
        assert_eq!(end, GlobalStatus::Succeeded);
        assert_eq!(s.calls_of(Op::Action), vec!["01", "02", "03"]);
        assert!(s.calls_of(Op::Compensate).is_empty());
    }

    #[test]
    fn failure_compensates_in_reverse_including_the_failed_step() {
        let mut s = saga(4, None);
        let end = s.run(|c| {
            if c.branch_id == "03" && c.op == Op::Action {
                Answer::Failure
            } else {
                Answer::Success
            }
        });
        assert_eq!(end, GlobalStatus::Failed);
        assert_eq!(s.calls_of(Op::Action), vec!["01", "02", "03"]);
        assert_eq!(s.calls_of(Op::Compensate), vec!["03", "02", "01"]);
    }

    #[test]
    fn transient_errors_are_retried() {
        let mut s = saga(2, None);
        let mut n = 0;
        let end = s.run(|c| {
            n += 1;
            if c.branch_id == "02" && n < 5 {
                Answer::Transient
            } else {
                Answer::Success
            }
        });
        assert_eq!(end, GlobalStatus::Succeeded);
        assert_eq!(s.calls_of(Op::Action), vec!["01", "02", "02", "02", "02"]);
    }

    #[test]
    fn timeout_aborts_a_stuck_saga() {
        let mut s = saga(2, None);
        s.tx.timeout_at = Some(5_000);
        let end = s.run(|c| {
            if c.branch_id == "02" && c.op == Op::Action {
                Answer::Transient
            } else {
                Answer::Success
            }
        });
        assert_eq!(end, GlobalStatus::Failed);
        assert_eq!(s.calls_of(Op::Compensate), vec!["02", "01"]);
    }

    #[test]
    fn an_abort_compensates_steps_whose_success_was_not_written_yet() {
        // A process called both actions (the first one's success rode with a write that
        // never happened) and died; its successor finds both pending when the timeout
        // passes. Step 2 may have run: it must be compensated too, before step 1.
        let mut s = saga(2, None);
        s.tx.timeout_at = Some(0);
        s.now = 10;
        assert_eq!(s.run(|_| Answer::Success), GlobalStatus::Failed);
        assert_eq!(s.calls_of(Op::Compensate), vec!["02", "01"]);
        assert!(s.calls_of(Op::Action).is_empty());
    }

    #[test]
    fn concurrent_respects_dependencies() {
        // 0 and 1 independent, 2 waits for both, 3 waits for 2.
        let mut s = saga(4, Some(vec![vec![], vec![], vec![0, 1], vec![2]]));
        let end = s.run(|_| Answer::Success);
        assert_eq!(end, GlobalStatus::Succeeded);
        assert_eq!(s.rounds[0], vec!["01 action", "02 action"]);
        assert_eq!(s.rounds[1], vec!["03 action"]);
        assert_eq!(s.rounds[2], vec!["04 action"]);
    }

    #[test]
    fn compensation_failure_needs_attention() {
        let mut s = saga(2, None);
        let end = s.run(|c| match (c.branch_id.as_str(), c.op) {
            ("02", Op::Action) | ("01", Op::Compensate) => Answer::Failure,
            _ => Answer::Success,
        });
        assert_eq!(end, GlobalStatus::Aborting);
        assert!(
            s.attention
                .as_deref()
                .unwrap()
                .contains("01 compensate answered FAILURE")
        );
    }

    #[test]
    fn budget_spent_needs_attention() {
        let mut s = saga(1, None);
        s.tx.policy.retry_limit = 3;
        let end = s.run(|_| Answer::Transient);
        assert_eq!(end, GlobalStatus::Submitted);
        assert_eq!(s.calls_of(Op::Action).len(), 3);
        assert!(
            s.attention
                .as_deref()
                .unwrap()
                .contains("retry budget spent"),
            "{:?}",
            s.attention
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn any_answers_end_in_a_valid_final_state(
            n in 1usize..7,
            dag in proptest::collection::vec(proptest::collection::vec(0usize..6, 0..3), 6),
            concurrent in any::<bool>(),
            answers in proptest::collection::vec(0u8..10, 64),
        ) {
            // Only edges to earlier steps, which keeps the map acyclic like the API requires.
            let after = concurrent.then(|| {
                (0..n).map(|s| {
                    let mut d: Vec<usize> = dag[s].iter().copied().filter(|&d| d < s).collect();
                    d.sort_unstable();
                    d.dedup();
                    d
                }).collect::<Vec<_>>()
            });
            let mut s = saga(n, after.clone());
            let mut k = 0;
            let end = s.run(|c| {
                let a = answers[k % answers.len()];
                k += 1;
                match (c.op, a) {
                    (Op::Action, 0) => Answer::Failure,
                    (_, 1..=2) => Answer::Transient,
                    (_, 3) => Answer::Ongoing,
                    _ => Answer::Success,
                }
            });
            prop_assert!(end.is_final(), "ended in {end} ({:?})", s.attention);
            sim::check_saga_invariants(&s, after.as_deref())?;
        }
    }
}
