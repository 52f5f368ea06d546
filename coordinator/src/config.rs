//! Configuration: defaults that run with nothing set, overridden by a TOML file, overridden
//! by environment variables (`DTX_DATABASE_URL`, `DTX_LISTEN`, ...).

use std::path::Path;

use serde::Deserialize;

use crate::engine::Policy;

/// Everything the coordinator can be told. Every field has a default that runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `sqlite://PATH` (embedded, the default `sqlite://dtx.db`) or `postgres://...`.
    /// Env: `DTX_DATABASE_URL`.
    pub database_url: String,
    /// Address of the HTTP API. Env: `DTX_LISTEN`.
    pub listen: String,
    /// Largest database pool (PostgreSQL). On PostgreSQL the write path (inserts, saves,
    /// group-commit batches) keeps connections of its own besides, at most as many (one
    /// per group-commit writer in use).
    pub max_connections: u32,
    /// How long a claimed transaction stays leased to this process without a write.
    pub lease_ms: u64,
    /// How often the poller looks for due work (the recovery path; submits are driven at once).
    pub poll_interval_ms: u64,
    /// Transactions claimed per poll.
    pub claim_batch: u32,
    /// Transactions driven at once by this process.
    pub max_inflight: usize,
    /// Waits up to this long are slept through while keeping the lease; longer ones hand
    /// the transaction back to the poller.
    pub inline_wait_ms: u64,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Most steps / branches in one transaction.
    pub max_branches: usize,
    /// Longest a `wait_result` request waits for the final state.
    pub wait_result_timeout_ms: u64,
    /// Who may use the dashboard and the admin API: each token has a name (kept in the
    /// audit log) and a role. With none, both answer loopback callers only (as admin).
    /// Env: `DTX_ADMIN_TOKEN` and `DTX_VIEWER_TOKEN` add one token each.
    pub tokens: Vec<AccessToken>,
    /// Calls in flight at once to one participant (`host:port`); the rest wait their turn.
    /// Env: `DTX_CALLS_PER_TARGET`.
    pub calls_per_target: usize,
    /// Per-participant exceptions to `calls_per_target`: `"host:port" = limit`.
    pub target_limits: std::collections::BTreeMap<String, usize>,
    /// On SIGTERM: how long in-flight transactions may run on (half of it) and then take to
    /// hand themselves back, before the remaining leases are released and the process
    /// exits. Env: `DTX_SHUTDOWN_TIMEOUT_MS`.
    pub shutdown_timeout_ms: u64,
    /// Group commit: share one database commit between the writes of many transactions
    /// (each write is still acknowledged only after its commit). Env: `DTX_GROUP_COMMIT`.
    pub group_commit: bool,
    /// Group commits in flight at once (PostgreSQL, MySQL; SQLite always has one).
    /// Env: `DTX_GROUP_COMMIT_WRITERS`.
    pub group_commit_writers: usize,
    /// Keep every participant call in the attempt history (the dashboard's timeline).
    /// Off (the default): a call succeeding at its op's first attempt is not recorded on
    /// its own, since the op's row says as much; failures, retries and the success that
    /// ends them are. Env: `DTX_RECORD_ALL_CALLS`.
    pub record_all_calls: bool,
    /// Kafka bootstrap servers (`host:port,...`) for `kafka://TOPIC` message steps. Env:
    /// `DTX_KAFKA_BROKERS`.
    pub kafka_brokers: Option<String>,
    /// Extra librdkafka producer properties (e.g. `"linger.ms" = "5"`); dtx sets
    /// `enable.idempotence=true` and `acks=all` itself.
    pub kafka: std::collections::BTreeMap<String, String>,
    /// OTLP/HTTP endpoint (e.g. `http://127.0.0.1:4318`) to export traces to; unset: the
    /// standard `OTEL_EXPORTER_OTLP_ENDPOINT`, else no export. Env: `DTX_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// Default retry and timeout rules of new transactions.
    pub defaults: Defaults,
}

/// A bearer token of the dashboard and admin API.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessToken {
    /// Who holds it (recorded as the actor of their actions).
    pub name: String,
    /// The secret.
    pub token: String,
    /// What it allows.
    pub role: Role,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read the dashboard, the admin listings and details.
    Viewer,
    /// Also act: retry, abort, mark done, change budgets.
    Admin,
}

/// Default rules of new transactions; a request may override each.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    /// Base of the exponential backoff.
    pub retry_interval_ms: u64,
    /// Cap of the backoff (DESIGN §6: 60 s).
    pub retry_cap_ms: u64,
    /// Calls of one op before the transaction needs attention.
    pub retry_limit: u32,
    /// Age after which a still-retrying transaction needs attention.
    pub max_age_ms: u64,
    /// Timeout of one participant call.
    pub request_timeout_ms: u64,
    /// TCC: abort when not submitted within this time (DESIGN §3: 35 s).
    pub tcc_timeout_to_fail_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "sqlite://dtx.db".into(),
            listen: "127.0.0.1:36789".into(),
            max_connections: 16,
            lease_ms: 30_000,
            poll_interval_ms: 1_000,
            claim_batch: 64,
            max_inflight: 2_048,
            inline_wait_ms: 2_000,
            body_limit_bytes: 1 << 20,
            max_branches: 512,
            wait_result_timeout_ms: 30_000,
            group_commit: true,
            group_commit_writers: 1,
            record_all_calls: false,
            shutdown_timeout_ms: 10_000,
            calls_per_target: 64,
            tokens: Vec::new(),
            otlp_endpoint: None,
            kafka_brokers: None,
            kafka: Default::default(),
            target_limits: Default::default(),
            defaults: Defaults::default(),
        }
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            retry_interval_ms: 1_000,
            retry_cap_ms: 60_000,
            retry_limit: 50,
            max_age_ms: 24 * 3600 * 1000,
            request_timeout_ms: 10_000,
            tcc_timeout_to_fail_ms: 35_000,
        }
    }
}

impl Defaults {
    /// The rules of a new transaction: the request's values where given, else these.
    pub fn policy(&self, o: &dtx::api::TxOptions) -> Policy {
        Policy {
            retry_interval_ms: o.retry_interval_ms.unwrap_or(self.retry_interval_ms).max(1),
            retry_cap_ms: o.retry_cap_ms.unwrap_or(self.retry_cap_ms).max(1),
            retry_limit: o.retry_limit.unwrap_or(self.retry_limit).max(1),
            max_age_ms: o.max_age_ms.unwrap_or(self.max_age_ms),
            request_timeout_ms: o
                .request_timeout_ms
                .unwrap_or(self.request_timeout_ms)
                .max(1),
            max_parallel_calls: o.max_parallel_calls.unwrap_or(0),
        }
    }
}

/// A configuration that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this struct.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        #[source]
        source: toml::de::Error,
    },
    /// An environment variable has a bad value.
    #[error("environment variable {name}: {detail}")]
    Env {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        detail: String,
    },
}

impl Config {
    /// Defaults, then the TOML file at `path` if given, then environment variables.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            None => Self::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: p.display().to_string(),
                    source,
                })?
            }
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = var("DTX_DATABASE_URL") {
            self.database_url = v;
        }
        for (env, name, role) in [
            ("DTX_ADMIN_TOKEN", "admin", Role::Admin),
            ("DTX_VIEWER_TOKEN", "viewer", Role::Viewer),
        ] {
            if let Some(token) = var(env).filter(|v| !v.is_empty()) {
                self.tokens.push(AccessToken {
                    name: name.into(),
                    token,
                    role,
                });
            }
        }
        if let Some(v) = var("DTX_KAFKA_BROKERS").filter(|v| !v.is_empty()) {
            self.kafka_brokers = Some(v);
        }
        // librdkafka properties: `name=value,name=value`.
        if let Some(v) = var("DTX_KAFKA_PROPERTIES").filter(|v| !v.is_empty()) {
            for pair in v.split(',') {
                let (k, val) = pair.split_once('=').ok_or_else(|| ConfigError::Env {
                    name: "DTX_KAFKA_PROPERTIES",
                    detail: format!("`{pair}`: use name=value,name=value"),
                })?;
                self.kafka
                    .insert(k.trim().to_owned(), val.trim().to_owned());
            }
        }
        if let Some(v) = var("DTX_OTLP_ENDPOINT").filter(|v| !v.is_empty()) {
            self.otlp_endpoint = Some(v);
        }
        if let Some(v) = var("DTX_LISTEN") {
            self.listen = v;
        }
        let num = |name: &'static str| -> Result<Option<u64>, ConfigError> {
            var(name)
                .map(|v| {
                    v.parse::<u64>().map_err(|e| ConfigError::Env {
                        name,
                        detail: format!("`{v}`: {e}"),
                    })
                })
                .transpose()
        };
        if let Some(v) = num("DTX_POLL_INTERVAL_MS")? {
            self.poll_interval_ms = v;
        }
        if let Some(v) = num("DTX_CALLS_PER_TARGET")? {
            self.calls_per_target = v as usize;
        }
        if let Some(v) = num("DTX_SHUTDOWN_TIMEOUT_MS")? {
            self.shutdown_timeout_ms = v;
        }
        if let Some(v) = num("DTX_LEASE_MS")? {
            self.lease_ms = v;
        }
        let flag = |name: &'static str| -> Result<Option<bool>, ConfigError> {
            var(name)
                .map(|v| match v.as_str() {
                    "1" | "true" | "on" => Ok(true),
                    "0" | "false" | "off" => Ok(false),
                    _ => Err(ConfigError::Env {
                        name,
                        detail: format!("`{v}`: use true or false"),
                    }),
                })
                .transpose()
        };
        if let Some(v) = flag("DTX_GROUP_COMMIT")? {
            self.group_commit = v;
        }
        if let Some(v) = flag("DTX_RECORD_ALL_CALLS")? {
            self.record_all_calls = v;
        }
        if let Some(v) = num("DTX_GROUP_COMMIT_WRITERS")? {
            self.group_commit_writers = (v as usize).max(1);
        }
        if let Some(v) = num("DTX_MAX_CONNECTIONS")? {
            self.max_connections = v as u32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let mut c: Config =
            toml::from_str("listen = \"0.0.0.0:1\"\n[defaults]\nretry_limit = 3\n").unwrap();
        assert_eq!(c.defaults.retry_limit, 3);
        assert_eq!(
            c.defaults.retry_cap_ms, 60_000,
            "unset keys keep their default"
        );
        c.apply_env(|n| (n == "DTX_LISTEN").then(|| "127.0.0.1:9".to_string()))
            .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9");
        assert!(
            c.apply_env(|n| (n == "DTX_LEASE_MS").then(|| "soon".to_string()))
                .is_err()
        );
        c.apply_env(|n| (n == "DTX_VIEWER_TOKEN").then(|| "v".to_string()))
            .unwrap();
        assert_eq!(c.tokens.len(), 1);
        assert_eq!(c.tokens[0].role, Role::Viewer);
        let t: Config =
            toml::from_str("[[tokens]]\nname = \"alice\"\ntoken = \"s3cret\"\nrole = \"admin\"\n")
                .unwrap();
        assert_eq!(t.tokens[0].role, Role::Admin);
        assert!(
            !format!("{:?}", t.tokens).contains("s3cret"),
            "secrets stay out of logs"
        );
        assert!(
            toml::from_str::<Config>("lisen = 1").is_err(),
            "typos are refused"
        );
    }
}
