//! The `dtx-coordinator` command line: `serve` (the default), `migrate`, and `tx`
//! (list, show, retry, abort) against a running coordinator.

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
        /// Admin token, for actions.
        #[arg(long, env = "DTX_ADMIN_TOKEN", global = true, hide_env_values = true)]
        token: Option<String>,
        /// What to do.
        #[command(subcommand)]
        action: TxCommand,
    },
}

/// `tx` subcommands.
#[derive(Debug, Subcommand)]
pub enum TxCommand {
    /// List transactions, newest first (`--stuck`: only those that need attention).
    List {
        /// Only transactions flagged `needs_attention`.
        #[arg(long)]
        stuck: bool,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one transaction with its branch ops and its audit log.
    Show {
        /// The gid.
        gid: String,
    },
    /// Retry now: clear `needs_attention`, fresh budget, failed phase-2 ops tried again.
    Retry {
        /// The gid.
        gid: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Force a prepared transaction or a submitted saga to roll back.
    Abort {
        /// The gid.
        gid: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
    },
}

/// Runs a `tx` subcommand; prints JSON answers.
async fn tx(url: &str, token: Option<&str>, action: TxCommand) -> Result<(), String> {
    let http = reqwest::Client::new();
    let base = url.trim_end_matches('/');
    let (method_post, path, body) = match &action {
        TxCommand::List { stuck, limit } => {
            let filter = if *stuck { "&needs_attention=true" } else { "" };
            (
                false,
                format!("/api/v1/transactions?limit={limit}{filter}"),
                None,
            )
        }
        TxCommand::Show { gid } => (false, format!("/api/v1/transactions/{gid}"), None),
        TxCommand::Retry { gid, reason } => (
            true,
            format!("/api/admin/transactions/{gid}/retry"),
            Some(serde_json::json!({ "reason": reason })),
        ),
        TxCommand::Abort { gid, reason } => (
            true,
            format!("/api/admin/transactions/{gid}/abort"),
            Some(serde_json::json!({ "reason": reason })),
        ),
    };
    let send = |p: String, post: bool, body: Option<serde_json::Value>| {
        let mut req = if post {
            http.post(format!("{base}{p}"))
        } else {
            http.get(format!("{base}{p}"))
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let res = req.send().await.map_err(|e| format!("{base}: {e}"))?;
            let status = res.status();
            let text = res.text().await.map_err(|e| e.to_string())?;
            let value: serde_json::Value =
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            if status.is_success() {
                Ok(value)
            } else {
                Err(format!("{status}: {value}"))
            }
        }
    };
    let mut out = send(path, method_post, body).await?;
    if let TxCommand::Show { gid } = &action {
        let audit = send(format!("/api/admin/transactions/{gid}/audit"), false, None).await?;
        if let Some(map) = out.as_object_mut() {
            map.insert("audit".into(), audit);
        }
    }
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}

/// Runs the command line; the binary's `main`.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DTX_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
