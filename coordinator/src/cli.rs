//! The `dtx-coordinator` command line: `serve` (the default), `migrate`, and `tx`
//! (list, show, retry, abort, done, budget) against a running coordinator's admin API.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::server;

/// dtx coordinator: drives saga and TCC transactions to a final state.
#[derive(Debug, Parser)]
#[command(name = "dtx-coordinator", version)]
pub struct Cli {
    /// TOML configuration file (environment variables override it).
    #[arg(long, env = "DTX_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator (HTTP API, driver and poller).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Look at and act on transactions of a running coordinator (over its HTTP API).
    Tx {
        /// The coordinator.
        #[arg(
            long,
            env = "DTX_URL",
            default_value = "http://127.0.0.1:36789",
            global = true
        )]
        url: String,
        /// Access token (an admin token for actions, a viewer token suffices to look).
        #[arg(long, env = "DTX_ADMIN_TOKEN", global = true, hide_env_values = true)]
        token: Option<String>,
        /// What to do.
        #[command(subcommand)]
        action: TxCommand,
    },
}

/// `tx` subcommands (each mirrors an admin API call).
#[derive(Debug, Subcommand)]
pub enum TxCommand {
    /// List transactions, newest first, as a table (`--json` for the API's answer).
    List {
        /// Only transactions flagged `needs_attention`.
        #[arg(long)]
        stuck: bool,
        /// Only this status (prepared, submitted, aborting, succeeded, failed).
        #[arg(long)]
        status: Option<String>,
        /// Only this mode (saga, tcc, xa, msg).
        #[arg(long = "type")]
        trans_type: Option<String>,
        /// Only gids starting with this.
        #[arg(long)]
        gid_prefix: Option<String>,
        /// Only transactions calling this participant (`host` or `host:port`).
        #[arg(long)]
        host: Option<String>,
        /// Only transactions created more than this many seconds ago.
        #[arg(long)]
        older_than: Option<u64>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Cursor printed at the end of the previous page.
        #[arg(long)]
        after: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one transaction: fields, branch ops, call history and audit log (JSON).
    Show {
        /// The gid.
        gid: String,
    },
    /// Retry now: clear `needs_attention`, fresh budget, failed phase-2 ops tried again
    /// (`--branch` and `--op`: that op only).
    Retry {
        /// The gid.
        gid: String,
        /// Only this branch's op.
        #[arg(long, requires = "op")]
        branch: Option<String>,
        /// The op of `--branch` (action, compensate, confirm, cancel, commit, rollback).
        #[arg(long, requires = "branch")]
        op: Option<String>,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
        /// Who you are, for the audit log.
        #[arg(long)]
        actor: Option<String>,
    },
    /// Force a prepared transaction or a submitted saga to roll back (runs compensation).
    Abort {
        /// The gid.
        gid: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
        /// Who you are, for the audit log.
        #[arg(long)]
        actor: Option<String>,
    },
    /// Mark a branch op done without calling it (its effect happened or was done by hand).
    Done {
        /// The gid.
        gid: String,
        /// The branch.
        branch: String,
        /// The op.
        op: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
        /// Who you are, for the audit log.
        #[arg(long)]
        actor: Option<String>,
    },
    /// Change the retry budget of a transaction and drive it at once.
    Budget {
        /// The gid.
        gid: String,
        /// Calls per op before it needs attention.
        #[arg(long)]
        retry_limit: Option<u32>,
        /// Age in ms after which it needs attention.
        #[arg(long)]
        max_age_ms: Option<u64>,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
        /// Who you are, for the audit log.
        #[arg(long)]
        actor: Option<String>,
    },
}

fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let present: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
        .collect();
    serde_urlencoded::to_string(present).unwrap_or_default()
}

fn print_table(page: &serde_json::Value) {
    let rows = page["transactions"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<40} {:<5} {:<10} {:>8} {:>6}  WHY",
        "GID", "MODE", "STATUS", "AGE_S", "CALLS"
    );
    for r in &rows {
        let why = r["needs_attention"]
            .as_str()
            .or(r["rollback_reason"].as_str())
            .unwrap_or("");
        println!(
            "{:<40} {:<5} {:<10} {:>8} {:>6}  {}",
            r["gid"].as_str().unwrap_or(""),
            r["trans_type"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["age_s"],
            r["attempts"],
            why
        );
    }
    if let Some(next) = page["next"].as_str() {
        println!("more: --after {next}");
    }
}

/// Runs a `tx` subcommand; prints JSON answers (a table for `list`).
async fn tx(url: &str, token: Option<&str>, action: TxCommand) -> Result<(), String> {
    let http = reqwest::Client::new();
    let base = url.trim_end_matches('/');
    let act = |path: String, reason: &str, actor: &Option<String>, extra: serde_json::Value| {
        let mut body = serde_json::json!({ "reason": reason });
        if let Some(a) = actor {
            body["actor"] = a.clone().into();
        }
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        (true, path, Some(body))
    };
    let (method_post, path, body) = match &action {
        TxCommand::List {
            stuck,
            status,
            trans_type,
            gid_prefix,
            host,
            older_than,
            limit,
            after,
            ..
        } => {
            let q = query_string(&[
                ("needs_attention", stuck.then(|| "true".to_owned())),
                ("status", status.clone()),
                ("trans_type", trans_type.clone()),
                ("gid_prefix", gid_prefix.clone()),
                ("host", host.clone()),
                ("older_than_s", older_than.map(|s| s.to_string())),
                ("limit", Some(limit.to_string())),
                ("after", after.clone()),
            ]);
            (false, format!("/api/admin/transactions?{q}"), None)
        }
        TxCommand::Show { gid } => (false, format!("/api/admin/transactions/{gid}"), None),
        TxCommand::Retry {
            gid,
            branch: Some(branch),
            op: Some(op),
            reason,
            actor,
        } => act(
            format!("/api/admin/transactions/{gid}/branches/{branch}/{op}/retry"),
            reason,
            actor,
            serde_json::json!({}),
        ),
        TxCommand::Retry {
            gid, reason, actor, ..
        } => act(
            format!("/api/admin/transactions/{gid}/retry"),
            reason,
            actor,
            serde_json::json!({}),
        ),
        TxCommand::Abort { gid, reason, actor } => act(
            format!("/api/admin/transactions/{gid}/abort"),
            reason,
            actor,
            serde_json::json!({}),
        ),
        TxCommand::Done {
            gid,
            branch,
            op,
            reason,
            actor,
        } => act(
            format!("/api/admin/transactions/{gid}/branches/{branch}/{op}/done"),
            reason,
            actor,
            serde_json::json!({}),
        ),
        TxCommand::Budget {
            gid,
            retry_limit,
            max_age_ms,
            reason,
            actor,
        } => act(
            format!("/api/admin/transactions/{gid}/budget"),
            reason,
            actor,
            serde_json::json!({ "retry_limit": retry_limit, "max_age_ms": max_age_ms }),
        ),
    };
    let mut req = if method_post {
        http.post(format!("{base}{path}"))
    } else {
        http.get(format!("{base}{path}"))
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.map_err(|e| format!("{base}: {e}"))?;
    let status = res.status();
    let text = res.text().await.map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if !status.is_success() {
        return Err(format!("{status}: {value}"));
    }
    match &action {
        TxCommand::List { json: false, .. } => print_table(&value),
        _ => println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ),
    }
    Ok(())
}

/// Runs the command line; the binary's `main`.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dtx-coordinator: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dtx-coordinator: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Outside the runtime: the OTLP exporter's blocking HTTP client runs on the batch
    // processor's own thread and must not be made (or dropped) inside an async context.
    let serving = matches!(cli.command, None | Some(Command::Serve));
    let endpoint = serving
        .then(|| crate::telemetry::endpoint(config.otlp_endpoint.as_deref()))
        .flatten();
    let telemetry = match crate::telemetry::init(endpoint.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("dtx-coordinator: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Tx { url, token, action } => tx(&url, token.as_deref(), action).await,
            Command::Migrate => server::open_store(&config)
                .await
                .map(|s| {
                    println!("migrations applied to the {} store", s.backend());
                })
                .map_err(|e| e.to_string()),
            Command::Serve => server::serve(
                config,
                // A line on stdout that scripts and tests can wait for.
                |addr| println!("listening on http://{addr}"),
                shutdown_signal(),
            )
            .await
            .map_err(|e| e.to_string()),
        }
    });
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dtx-coordinator: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
