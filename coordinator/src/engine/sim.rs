//! A deterministic simulator for engine tests: runs [`plan`] / [`apply_outcome`] to the
//! end against scripted participant answers, advancing a virtual clock.

use dtx::{GlobalStatus, Op, OpStatus, TransType};
use proptest::test_runner::TestCaseError;

use super::{OpState, Outcome, Policy, TxState, apply_outcome, plan};

pub fn policy() -> Policy {
    Policy {
        retry_interval_ms: 100,
        retry_cap_ms: 2_000,
        retry_limit: 10_000,
        max_age_ms: u64::MAX / 4,
        request_timeout_ms: 1_000,
        max_parallel_calls: 0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Success,
    Failure,
    Ongoing,
    Transient,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub branch_id: String,
    pub op: Op,
    pub seq: u32,
    pub answer: Answer,
    pub round: usize,
}

pub struct Sim {
    pub tx: TxState,
    pub ops: Vec<OpState>,
    pub now: i64,
    pub log: Vec<Call>,
    pub rounds: Vec<Vec<String>>,
    pub attention: Option<String>,
}

impl Sim {
    fn new(
        trans_type: TransType,
        status: GlobalStatus,
        ops: Vec<OpState>,
        after: Option<Vec<Vec<usize>>>,
    ) -> Self {
        let tx = TxState {
            trans_type,
            status,
            created_at: 0,
            timeout_at: None,
            needs_attention: None,
            policy: policy(),
            saga_after: after,
        };
        Self {
            tx,
            ops,
            now: 0,
            log: Vec::new(),
            rounds: Vec::new(),
            attention: None,
        }
    }

    pub fn saga(n: usize, after: Option<Vec<Vec<usize>>>) -> Self {
        let ops = (0..n)
            .flat_map(|s| {
                let id = format!("{:02}", s + 1);
                [
                    OpState::new(id.clone(), Op::Action, s as u32),
                    OpState::new(id, Op::Compensate, s as u32),
                ]
            })
            .collect();
        Self::new(TransType::Saga, GlobalStatus::Submitted, ops, after)
    }

    pub fn tcc(n: usize) -> Self {
        let ops = (0..n)
            .flat_map(|b| {
                let id = format!("{:02}", b + 1);
                [
                    OpState::new(id.clone(), Op::Confirm, b as u32),
                    OpState::new(id, Op::Cancel, b as u32),
                ]
            })
            .collect();
        Self::new(TransType::Tcc, GlobalStatus::Prepared, ops, None)
    }

    pub fn xa(n: usize) -> Self {
        let ops = (0..n)
            .flat_map(|b| {
                let id = format!("{:02}", b + 1);
                [
                    OpState::new(id.clone(), Op::Commit, b as u32),
                    OpState::new(id, Op::Rollback, b as u32),
                ]
            })
            .collect();
        Self::new(TransType::Xa, GlobalStatus::Prepared, ops, None)
    }

    /// Runs until a final state, an attention stop, or nothing left to wait for.
    pub fn run(&mut self, mut answer: impl FnMut(&OpState) -> Answer) -> GlobalStatus {
        for _ in 0..100_000 {
            let p = plan(&self.tx, &self.ops, self.now);
            self.tx.status = p.status;
            if p.attention.is_some() {
                self.attention = p.attention;
                return self.tx.status;
            }
            if p.status.is_final() {
                return p.status;
            }
            if p.calls.is_empty() {
                match p.wake_at {
                    Some(w) if w > self.now => self.now = w,
                    Some(_) => self.now += 1,
                    None => return self.tx.status,
                }
                continue;
            }
            let mut round = Vec::new();
            for &i in &p.calls {
                let a = answer(&self.ops[i]);
                let op = &mut self.ops[i];
                round.push(format!("{} {}", op.branch_id, op.op));
                self.log.push(Call {
                    branch_id: op.branch_id.clone(),
                    op: op.op,
                    seq: op.seq,
                    answer: a,
                    round: self.rounds.len(),
                });
                let outcome = match a {
                    Answer::Success => Outcome::Success,
                    Answer::Failure => Outcome::Failure("refused".into()),
                    Answer::Ongoing => Outcome::Ongoing,
                    Answer::Transient => Outcome::Transient("HTTP 503".into()),
                };
                apply_outcome(op, &outcome, self.now, &self.tx.policy, 0.5);
            }
            self.rounds.push(round);
            self.now += 1;
        }
        panic!("simulation did not settle");
    }

    /// Branch ids of the calls of `op`, in call order.
    pub fn calls_of(&self, op: Op) -> Vec<&str> {
        self.log
            .iter()
            .filter(|c| c.op == op)
            .map(|c| c.branch_id.as_str())
            .collect()
    }
}

/// The saga properties of the engine, checked on a finished simulation.
pub fn check_saga_invariants(s: &Sim, after: Option<&[Vec<usize>]>) -> Result<(), TestCaseError> {
    let n = s.ops.len() / 2;
    let deps = |t: usize| -> Vec<usize> {
        match after {
            Some(a) => a[t].clone(),
            None if t == 0 => vec![],
            None => vec![t - 1],
        }
    };
    // No op is called again after it answered SUCCESS or FAILURE.
    for (i, c) in s.log.iter().enumerate() {
        let settled_before = s.log[..i].iter().any(|p| {
            p.seq == c.seq && p.op == c.op && matches!(p.answer, Answer::Success | Answer::Failure)
        });
        proptest::prop_assert!(
            !settled_before,
            "{} {} called after it settled",
            c.branch_id,
            c.op
        );
    }
    // No action is called after an action answered FAILURE (calls of one round are made
    // together, before any of their answers is known).
    if let Some(fail) = s
        .log
        .iter()
        .find(|c| c.op == Op::Action && c.answer == Answer::Failure)
    {
        proptest::prop_assert!(
            !s.log
                .iter()
                .any(|c| c.op == Op::Action && c.round > fail.round),
            "an action ran after a failed action"
        );
    }
    let action_called = |t: usize| {
        s.log
            .iter()
            .any(|c| c.op == Op::Action && c.seq as usize == t)
    };
    let comp_calls = |t: usize| -> Vec<usize> {
        s.log
            .iter()
            .enumerate()
            .filter(|(_, c)| c.op == Op::Compensate && c.seq as usize == t)
            .map(|(i, _)| i)
            .collect()
    };
    match s.tx.status {
        GlobalStatus::Succeeded => {
            proptest::prop_assert!(
                s.ops
                    .iter()
                    .filter(|o| o.op == Op::Action)
                    .all(|o| o.status == OpStatus::Succeeded)
            );
            proptest::prop_assert!(s.calls_of(Op::Compensate).is_empty());
        }
        GlobalStatus::Failed => {
            for t in 0..n {
                // Every step whose action ran is compensated.
                if action_called(t) {
                    proptest::prop_assert!(
                        !comp_calls(t).is_empty(),
                        "step {t} ran but was not compensated"
                    );
                }
                // Reverse dependency order: a step is compensated only after the steps that
                // waited for it are.
                for d in deps(t) {
                    let (ct, cd) = (comp_calls(t), comp_calls(d));
                    if let (Some(&last_t), Some(&first_d)) = (ct.last(), cd.first()) {
                        proptest::prop_assert!(
                            first_d > last_t,
                            "step {d} compensated before its dependent {t}"
                        );
                    }
                }
            }
        }
        other => proptest::prop_assert!(false, "not final: {other}"),
    }
    Ok(())
}
