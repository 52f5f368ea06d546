//! Prometheus metrics, served at `/metrics`: what this coordinator process did (counters
//! and histograms) and what the store holds (gauges read at scrape time, the same for
//! every coordinator sharing the database).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::Gauges;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    trans_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishLabels {
    trans_type: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    op: &'static str,
    outcome: &'static str,
    target_host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The coordinator's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    started: Family<TypeLabels, Counter>,
    finished: Family<FinishLabels, Counter>,
    attention: Family<TypeLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    tx_seconds: Histograms<FinishLabels>,
    call_seconds: Histograms<CallLabels>,
    actions: Family<ActionLabels, Counter>,
    polls: Counter,
    claimed: Counter,
    lease_conflicts: Counter,
    leases_released: Counter,
    driving: Gauge,
    in_flight: Gauge,
    needs_attention: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    group_commit: GroupCommitMetrics,
}

/// What the group-commit writers report: how many batches, how many writes in them, and
/// how long each took (statement and commit). Writes per batch is their ratio; the rate of
/// the duration's sum, per writer, is how busy the writers are (near 1: the database's
/// commit path is the bottleneck, and more load only makes batches larger).
#[derive(Debug, Clone)]
pub struct GroupCommitMetrics {
    batches: Counter,
    writes: Counter,
    seconds: Histogram,
}

impl GroupCommitMetrics {
    /// One batch of `writes` writes took `seconds`.
    pub fn batch(&self, writes: usize, seconds: f64) {
        self.batches.inc();
        self.writes.inc_by(writes as u64);
        self.seconds.observe(seconds);
    }
}

fn tx_histogram() -> Histogram {
    // 1 ms to ~9 h.
    Histogram::new(exponential_buckets(0.001, 2.5, 18))
}

fn call_histogram() -> Histogram {
    // 0.1 ms to ~40 s.
    Histogram::new(exponential_buckets(0.0001, 2.5, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, registered under the `dtx_` prefix.
    pub fn new() -> Self {
        let mut m = Self {
            started: Family::default(),
            finished: Family::default(),
            attention: Family::default(),
            attempts: Family::default(),
            tx_seconds: Family::new_with_constructor(tx_histogram),
            call_seconds: Family::new_with_constructor(call_histogram),
            actions: Family::default(),
            polls: Counter::default(),
            claimed: Counter::default(),
            lease_conflicts: Counter::default(),
            leases_released: Counter::default(),
            driving: Gauge::default(),
            in_flight: Gauge::default(),
            needs_attention: Gauge::default(),
            oldest_age: Gauge::default(),
            group_commit: GroupCommitMetrics {
                batches: Counter::default(),
                writes: Counter::default(),
                seconds: call_histogram(),
            },
            registry: Registry::with_prefix("dtx"),
        };
        m.registry.register(
            "transactions_started",
            "Global transactions accepted by this process, by mode",
            m.started.clone(),
        );
        m.registry.register(
            "transactions_finished",
            "Global transactions this process drove to a final status, by mode and outcome (succeeded, failed)",
            m.finished.clone(),
        );
        m.registry.register(
            "transactions_flagged",
            "Transactions this process stopped retrying and flagged needs_attention, by mode",
            m.attention.clone(),
        );
        m.registry.register(
            "branch_attempts",
            "Participant calls, by op, outcome (success, failure, ongoing, transient) and target host",
            m.attempts.clone(),
        );
        m.registry.register(
            "transaction_duration_seconds",
            "Creation (submit or prepare) to final status, by mode and outcome",
            m.tx_seconds.clone(),
        );
        m.registry.register(
            "branch_call_duration_seconds",
            "One participant call, by op and outcome",
            m.call_seconds.clone(),
        );
        m.registry.register(
            "operator_actions",
            "Operator actions carried out (each is in the audit log), by action",
            m.actions.clone(),
        );
        m.registry.register(
            "poller_polls",
            "Times the poller looked for due transactions",
            m.polls.clone(),
        );
        m.registry.register(
            "poller_claimed",
            "Transactions the poller claimed (leased) for this process",
            m.claimed.clone(),
        );
        m.registry.register(
            "lease_conflicts",
            "Writes refused because the row changed or the lease passed to another process",
            m.lease_conflicts.clone(),
        );
        m.registry.register(
            "leases_released",
            "Leases handed back at shutdown",
            m.leases_released.clone(),
        );
        m.registry.register(
            "driving",
            "Transactions this process is driving now",
            m.driving.clone(),
        );
        m.registry.register(
            "transactions_in_flight",
            "Transactions not final, in the store (all coordinators)",
            m.in_flight.clone(),
        );
        m.registry.register(
            "transactions_needs_attention",
            "Transactions waiting for an operator, in the store",
            m.needs_attention.clone(),
        );
        m.registry.register(
            "oldest_non_final_age_seconds",
            "Age of the oldest transaction not final (0 when none)",
            m.oldest_age.clone(),
        );
        m.registry.register(
            "group_commit_batches",
            "Batches written by the group-commit writers (each one statement or transaction, one commit)",
            m.group_commit.batches.clone(),
        );
        m.registry.register(
            "group_commit_writes",
            "Inserts and saves carried by those batches",
            m.group_commit.writes.clone(),
        );
        m.registry.register(
            "group_commit_batch_duration_seconds",
            "One batch, from its statement sent to its commit acknowledged",
            m.group_commit.seconds.clone(),
        );
        m
    }

    /// The handles the group-commit writers report to.
    pub fn group_commit(&self) -> GroupCommitMetrics {
        self.group_commit.clone()
    }

    /// A transaction was accepted.
    pub fn started(&self, trans_type: dtx::TransType) {
        self.started
            .get_or_create(&TypeLabels {
                trans_type: trans_type.as_str(),
            })
            .inc();
    }

    /// A transaction became final after `seconds` since its creation.
    pub fn finished(&self, trans_type: dtx::TransType, status: dtx::GlobalStatus, seconds: f64) {
        let labels = FinishLabels {
            trans_type: trans_type.as_str(),
            outcome: status.as_str(),
        };
        self.finished.get_or_create(&labels).inc();
        self.tx_seconds
            .get_or_create(&labels)
            .observe(seconds.max(0.0));
    }

    /// A transaction was flagged `needs_attention`.
    pub fn flagged(&self, trans_type: dtx::TransType) {
        self.attention
            .get_or_create(&TypeLabels {
                trans_type: trans_type.as_str(),
            })
            .inc();
    }

    /// A participant call ended.
    pub fn attempt(&self, op: dtx::Op, outcome: &'static str, target: &str, seconds: f64) {
        self.attempts
            .get_or_create(&AttemptLabels {
                op: op.as_str(),
                outcome,
                target_host: target_host(target).to_owned(),
            })
            .inc();
        self.call_seconds
            .get_or_create(&CallLabels {
                op: op.as_str(),
                outcome,
            })
            .observe(seconds.max(0.0));
    }

    /// An operator action was carried out.
    pub fn operator_action(&self, action: &'static str) {
        self.actions.get_or_create(&ActionLabels { action }).inc();
    }

    /// The poller looked and claimed `n`.
    pub fn polled(&self, n: usize) {
        self.polls.inc();
        self.claimed.inc_by(n as u64);
    }

    /// A fenced write was refused.
    pub fn lease_conflict(&self) {
        self.lease_conflicts.inc();
    }

    /// Leases were released at shutdown.
    pub fn released(&self, n: u64) {
        self.leases_released.inc_by(n);
    }

    /// The text exposition, with the gauges set from `gauges` (read from the store just
    /// before) and `driving` (this process's drives) at `now`.
    pub fn render(&self, gauges: Option<Gauges>, driving: usize, now: i64) -> String {
        self.driving.set(driving as i64);
        if let Some(g) = gauges {
            self.in_flight.set(g.in_flight);
            self.needs_attention.set(g.needs_attention);
            self.oldest_age.set(
                g.oldest_created_at
                    .map_or(0.0, |t| ((now - t).max(0) as f64) / 1000.0),
            );
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `host:port` of a URL (`http://host:port/path` → `host:port`), for a label with few values.
pub fn target_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_targets() {
        assert_eq!(
            target_host("http://127.0.0.1:8080/api/x?y=1"),
            "127.0.0.1:8080"
        );
        assert_eq!(target_host("http://user:pw@svc/x"), "svc");
        assert_eq!(target_host("kafka://orders?key=a"), "orders");
        assert_eq!(target_host("weird"), "weird");
    }

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::new();
        m.started(dtx::TransType::Saga);
        m.finished(dtx::TransType::Saga, dtx::GlobalStatus::Succeeded, 0.01);
        m.attempt(dtx::Op::Action, "success", "http://h:1/a", 0.001);
        let text = m.render(
            Some(Gauges {
                in_flight: 3,
                needs_attention: 1,
                oldest_created_at: Some(1_000),
            }),
            2,
            11_000,
        );
        assert!(
            text.contains("dtx_transactions_started_total{trans_type=\"saga\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "dtx_branch_attempts_total{op=\"action\",outcome=\"success\",target_host=\"h:1\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("dtx_transactions_needs_attention 1"),
            "{text}"
        );
        assert!(
            text.contains("dtx_oldest_non_final_age_seconds 10"),
            "{text}"
        );
        assert!(text.contains("dtx_transaction_duration_seconds_count{trans_type=\"saga\",outcome=\"succeeded\"} 1"), "{text}");
    }
}
