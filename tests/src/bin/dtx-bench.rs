//! `dtx-bench`: throughput and latency of two-step sagas through a real coordinator.
//!
//! W1 = two-step saga, both actions succeed; W2 = step 2 refuses (409), so step 2 and
//! step 1 are compensated. Each submit asks `wait_result`, so its latency is submit →
//! final status. Participants are no-op HTTP services on loopback; at the end their
//! counters are checked per gid: every expected call happened exactly as often as it
//! should. Run it with `scripts/bench` (release build).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::any;
use clap::Parser;
use dtx::GlobalStatus;
use dtx::api::{SagaStep, SubmitSaga, TxOptions};
use dtx_tests::{Backend, CoordinatorProc};

#[derive(Debug, Parser)]
#[command(
    name = "dtx-bench",
    about = "W1/W2 saga throughput and latency through a real coordinator"
)]
struct Args {
    /// Use a coordinator that is already running (else one is started per store).
    #[arg(long)]
    url: Option<String>,
    /// Stores to start coordinators on: sqlite, postgres, mysql (servers via DTX_TEST_POSTGRES_URL, DTX_TEST_MYSQL_URL).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    stores: Vec<String>,
    /// Workloads: w1, w2.
    #[arg(long, value_delimiter = ',', default_value = "w1,w2")]
    workloads: Vec<String>,
    /// Transactions per run.
    #[arg(short = 'n', long, default_value_t = 2000)]
    transactions: usize,
    /// Concurrency levels (one run each).
    #[arg(short = 'c', long, value_delimiter = ',', default_value = "32,1")]
    concurrency: Vec<usize>,
    /// Transactions to hold in flight at once for the memory measurement (0: skip).
    #[arg(long, default_value_t = 10_000)]
    in_flight: usize,
    /// Calls in flight at once to the participant (the coordinator's
    /// DTX_CALLS_PER_TARGET): high, so that holding 10,000 transactions in flight for the
    /// memory figure takes seconds; each slot costs the coordinator about 23 KiB.
    #[arg(long, default_value_t = 512)]
    calls_per_target: usize,
    /// Seconds of pgbench before each PostgreSQL run, for the bound beside it (0: skip).
    #[arg(long, default_value_t = 10)]
    pgbench_seconds: u32,
    /// Extra environment for the coordinators started here (`KEY=VALUE`, repeatable), to
    /// compare settings such as DTX_GROUP_COMMIT_WRITERS in one sitting.
    #[arg(long = "coordinator-env", value_name = "KEY=VALUE")]
    coordinator_env: Vec<String>,
    /// Threads of the load generator (initiators and participants); 1 runs it on a
    /// single-threaded runtime.
    #[arg(long, default_value_t = 1)]
    load_threads: usize,
}

/// CPU time (user + system) a process has used, in ms (Linux `/proc`), with that of its
/// children that have ended: PostgreSQL's postmaster collects the time of the backends
/// that exit during a run (pgbench's, an idle pool's), which would otherwise vanish from
/// the sum and make the database's figure too low.
fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')':
    // utime, stime, cutime and cstime are the 12th to 15th of them.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let mut ticks = 0.0;
    for i in 11..=14 {
        ticks += fields.get(i)?.parse::<f64>().ok()?;
    }
    Some(ticks * 10.0) // USER_HZ is 100 on Linux
}

/// CPU time (ms) used so far by all live processes whose command name starts with
/// `prefix` (the PostgreSQL server's backends, say).
fn cpu_ms_named(prefix: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(cpu_ms)
        .sum()
}

/// The server processes whose CPU counts as the database's (none for SQLite, which runs
/// inside the coordinator).
fn db_process(store: &str) -> &'static str {
    match store {
        "postgres" => "postgres",
        "mysql" => "mariadbd",
        _ => "",
    }
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Holds `n` one-step sagas in flight (their participant answers after 1 s, 512 calls at a
/// time) and returns
/// the coordinator's peak resident memory meanwhile, in MiB.
async fn hold_in_flight(
    client: &dtx::Client,
    url: &str,
    busi: &str,
    pid: u32,
    n: usize,
    tag: &str,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (client, next, busi, tag) = (
            client.clone(),
            Arc::clone(&next),
            busi.to_owned(),
            tag.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let saga = SubmitSaga {
                    gid: Some(format!("{tag}-{i}")),
                    steps: vec![SagaStep {
                        action: format!("{busi}/hold/action"),
                        ..Default::default()
                    }],
                    options: TxOptions {
                        request_timeout_ms: Some(30_000),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                client.submit_saga(&saga).await.context("submit")?;
            }
        }));
    }
    let mut peak: f64 = 0.0;
    while workers.iter().any(|w| !w.is_finished()) {
        peak = peak.max(rss_mib(pid).unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in workers {
        w.await??;
    }
    // Until the last of them is final.
    let http = reqwest::Client::new();
    loop {
        peak = peak.max(rss_mib(pid).unwrap_or(0.0));
        let page: serde_json::Value = http
            .get(format!(
                "{url}/api/v1/transactions?status=submitted&limit=1"
            ))
            .send()
            .await?
            .json()
            .await?;
        if page["transactions"].as_array().is_none_or(|a| a.is_empty()) {
            return Ok(peak);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The database's own bound: pgbench doing what a naive coordinator writes per global
/// transaction — one INSERT and one UPDATE of that row, each its own commit — on a fresh
/// database of the same server. Returns transactions (script runs) per second.
async fn pgbench_bound(clients: usize, seconds: u32) -> anyhow::Result<f64> {
    let db = Backend::Postgres.fresh().await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url).await?;
    sqlx::raw_sql("CREATE TABLE bench (id BIGSERIAL PRIMARY KEY, v INT NOT NULL)")
        .execute(&mut conn)
        .await?;
    let script = std::env::temp_dir().join(format!("dtx-pgbench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "INSERT INTO bench (v) VALUES (0) RETURNING id \\gset\nUPDATE bench SET v = v + 1 WHERE id = :id;\n",
    )?;
    let out = tokio::process::Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(&db.url)
        .output()
        .await
        .context("run pgbench (Debian package postgresql-client / postgresql-contrib)")?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .with_context(|| {
            format!(
                "no tps in pgbench output: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

type Counts = Arc<Mutex<HashMap<(String, String), u32>>>;

/// A coordinator to measure: its label, the process and database when started here, its URL.
type Target = (
    String,
    Option<(CoordinatorProc, dtx_tests::Database)>,
    String,
);

async fn participant(counts: Counts) -> anyhow::Result<String> {
    async fn handle(
        State(counts): State<Counts>,
        Path(path): Path<String>,
        Query(q): Query<HashMap<String, String>>,
    ) -> StatusCode {
        let gid = q.get("gid").cloned().unwrap_or_default();
        let refuse = path == "refuse/action";
        if path == "hold/action" {
            // Keeps transactions in flight for the memory measurement.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if let Ok(mut c) = counts.lock() {
            *c.entry((path, gid)).or_default() += 1;
        }
        if refuse {
            StatusCode::CONFLICT
        } else {
            StatusCode::OK
        }
    }
    let app = Router::new()
        .route("/{*path}", any(handle))
        .with_state(counts);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

struct RunResult {
    tps: f64,
    p50: Duration,
    p99: Duration,
    verified: bool,
}

async fn run(
    client: &dtx::Client,
    busi: &str,
    counts: &Counts,
    w2: bool,
    n: usize,
    c: usize,
    tag: &str,
) -> anyhow::Result<RunResult> {
    let step = |name: &str| SagaStep {
        action: format!("{busi}/{name}/action"),
        compensate: Some(format!("{busi}/{name}/compensate")),
        payload: Some(serde_json::json!({"amount": 1})),
        ..Default::default()
    };
    let saga = Arc::new(SubmitSaga {
        steps: vec![step("s1"), step(if w2 { "refuse" } else { "s2" })],
        options: TxOptions {
            retry_interval_ms: Some(100),
            ..Default::default()
        },
        wait_result: true,
        ..Default::default()
    });
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..c {
        let (client, saga, next, tag) = (
            client.clone(),
            Arc::clone(&saga),
            Arc::clone(&next),
            tag.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(out);
                }
                let mut s = (*saga).clone();
                s.gid = Some(format!("{tag}-{i}"));
                let t0 = Instant::now();
                let accepted = client.submit_saga(&s).await.context("submit")?;
                let want = if w2 {
                    GlobalStatus::Failed
                } else {
                    GlobalStatus::Succeeded
                };
                if accepted.status != want {
                    bail!(
                        "{} ended {} (expected {want})",
                        accepted.gid,
                        accepted.status
                    );
                }
                out.push(t0.elapsed());
            }
        }));
    }
    let mut lat = Vec::with_capacity(n);
    for w in workers {
        lat.extend(w.await??);
    }
    let elapsed = started.elapsed();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    // Every gid: each expected op exactly once, nothing else.
    let expected: &[&str] = if w2 {
        &[
            "s1/action",
            "refuse/action",
            "refuse/compensate",
            "s1/compensate",
        ]
    } else {
        &["s1/action", "s2/action"]
    };
    let counts = counts.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut verified = true;
    for i in 0..n {
        let gid = format!("{tag}-{i}");
        for path in expected {
            let got = counts
                .get(&((*path).to_owned(), gid.clone()))
                .copied()
                .unwrap_or(0);
            if got != 1 {
                eprintln!("{gid}: {path} called {got} times, expected once");
                verified = false;
            }
        }
    }
    let calls_for_tag = counts
        .keys()
        .filter(|(_, g)| g.starts_with(&format!("{tag}-")))
        .count();
    if calls_for_tag != n * expected.len() {
        eprintln!(
            "{tag}: {calls_for_tag} distinct (op, gid) pairs called, expected {}",
            n * expected.len()
        );
        verified = false;
    }
    Ok(RunResult {
        tps: n as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        verified,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = if args.load_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.load_threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let counts: Counts = Arc::default();
    let busi = participant(Arc::clone(&counts)).await?;
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );

    let mut targets: Vec<Target> = Vec::new();
    if let Some(url) = &args.url {
        targets.push(("external".into(), None, url.clone()));
    } else {
        for store in &args.stores {
            let backend = match store.as_str() {
                "sqlite" => Backend::Sqlite,
                "postgres" => Backend::Postgres,
                "mysql" => Backend::Mysql,
                other => bail!("unknown store `{other}` (sqlite, postgres, mysql)"),
            };
            let db = backend.fresh().await;
            let calls = args.calls_per_target.to_string();
            let mut env = vec![("DTX_CALLS_PER_TARGET", calls.as_str())];
            for kv in &args.coordinator_env {
                let Some(pair) = kv.split_once('=') else {
                    bail!("--coordinator-env takes KEY=VALUE, not `{kv}`");
                };
                env.push(pair);
            }
            let coord = CoordinatorProc::start(&db.url, &env).await;
            let url = coord.url.clone();
            targets.push((store.clone(), Some((coord, db)), url));
        }
    }

    // The PostgreSQL bound, measured on the same server right before each PostgreSQL run
    // (this machine's speed drifts by a third within minutes: a bound measured once at
    // the start can be far from the one that held during a later run).
    let measure_bound = args.url.is_none() && args.pgbench_seconds > 0;
    println!(
        "{:<9} {:<4} {:>6} {:>4} {:>9} {:>9} {:>9}  {:<23}  {:<8} vs pgbench",
        "store", "load", "N", "C", "tx/s", "p50 ms", "p99 ms", "CPU ms/tx coord/db/load", "calls"
    );
    let mut all_ok = true;
    for (store, keep, url) in &targets {
        let pid = keep.as_ref().and_then(|(c, _)| c.pid());
        let client = dtx::Client::with_timeout(url, Duration::from_secs(120));
        for workload in &args.workloads {
            let w2 = match workload.as_str() {
                "w1" => false,
                "w2" => true,
                other => bail!("unknown workload `{other}` (w1, w2)"),
            };
            for &c in &args.concurrency {
                let tag = format!("bench-{run_id}-{store}-{workload}-c{c}");
                let bound = if measure_bound && store == "postgres" {
                    Some(pgbench_bound(c.max(1), args.pgbench_seconds).await?)
                } else {
                    None
                };
                let cpu_before = pid.and_then(cpu_ms);
                let db_before = cpu_ms_named(db_process(store));
                let load_before = cpu_ms(std::process::id());
                let r = run(
                    &client,
                    &busi,
                    &counts,
                    w2,
                    args.transactions,
                    c.max(1),
                    &tag,
                )
                .await?;
                all_ok &= r.verified;
                let ratio = match bound {
                    Some(b) => format!("{:.2}x of {b:.0}", r.tps / b),
                    None => String::new(),
                };
                let per_tx = |ms: f64| ms / args.transactions as f64;
                let coord = match (cpu_before, pid.and_then(cpu_ms)) {
                    (Some(a), Some(b)) => format!("{:.3}", per_tx(b - a)),
                    _ => "-".into(),
                };
                let db = if db_process(store).is_empty() {
                    "-".into()
                } else {
                    format!("{:.3}", per_tx(cpu_ms_named(db_process(store)) - db_before))
                };
                let load = match (load_before, cpu_ms(std::process::id())) {
                    (Some(a), Some(b)) => format!("{:.3}", per_tx(b - a)),
                    _ => "-".into(),
                };
                let cpu = format!("{coord}/{db}/{load}");
                println!(
                    "{:<9} {:<4} {:>6} {:>4} {:>9.0} {:>9.2} {:>9.2}  {:<23}  {:<8} {}",
                    store,
                    workload.to_uppercase(),
                    args.transactions,
                    c,
                    r.tps,
                    r.p50.as_secs_f64() * 1e3,
                    r.p99.as_secs_f64() * 1e3,
                    cpu,
                    if r.verified { "exact" } else { "MISMATCH" },
                    ratio
                );
            }
        }
        if let (Some(pid), true) = (pid, args.in_flight > 0) {
            let base = rss_mib(pid).unwrap_or(0.0);
            let tag = format!("bench-{run_id}-{store}-hold");
            let peak = hold_in_flight(&client, url, &busi, pid, args.in_flight, &tag).await?;
            println!(
                "{store}: coordinator RSS with {} transactions in flight: peak {peak:.1} MiB (before: {base:.1} MiB)",
                args.in_flight
            );
        }
    }
    if !all_ok {
        bail!("participant counters do not match the expected calls");
    }
    Ok(())
}
