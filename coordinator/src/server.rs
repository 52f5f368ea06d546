//! Wiring: open the store, migrate, start the poller and the HTTP server, stop on a signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::clock::DbClock;
use crate::config::Config;
use crate::driver::{Driver, DriverConfig};
use crate::service::Coordinator;
use crate::store::{self, Lease, Store, StoreError};

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Kafka producer could not be configured.
    #[error("{0}")]
    Kafka(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Opens the configured store and applies its migrations.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let store = store::connect(&config.database_url, config.max_connections).await?;
    store.migrate().await?;
    Ok(store)
}

/// Runs the coordinator until `shutdown` completes. `on_listen` is told the bound address
/// (useful with port 0).
pub async fn serve(
    config: Config,
    on_listen: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let store = open_store(&config).await?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let store: Arc<dyn Store> = if config.group_commit {
        // SQLite has one writer. On PostgreSQL one writer measured best on 2 cores (3046
        // W1 tx/s against 2692 with 2 writers and 2364 with 4): while its commit is in
        // flight the next batch gathers, and the fewer, larger batches cost the database
        // and the coordinator less per transaction. Larger hosts may want more.
        let writers = if store.backend() == "sqlite" {
            1
        } else {
            config.group_commit_writers
        };
        Arc::new(store::group::GroupCommit::new(
            store,
            writers,
            256,
            metrics.group_commit(),
        ))
    } else {
        store
    };
    let clock = Arc::new(DbClock::new(&store).await?);
    let owner = format!("dtx-{}-{:08x}", std::process::id(), fastrand::u32(..));
    let kafka = match config.kafka_brokers.as_deref().filter(|b| !b.is_empty()) {
        Some(brokers) => Some(
            crate::invoke::KafkaInvoker::new(brokers, &config.kafka).map_err(StartError::Kafka)?,
        ),
        None => None,
    };
    let driver = Arc::new(Driver::new(
        Arc::clone(&store),
        Arc::clone(&clock),
        DriverConfig {
            owner: owner.clone(),
            lease_ms: config.lease_ms as i64,
            inline_wait_ms: config.inline_wait_ms as i64,
            max_inflight: config.max_inflight,
            target_limits: crate::invoke::http::TargetLimits::new(
                config.calls_per_target,
                config.target_limits.clone(),
            ),
            kafka: kafka.clone(),
            record_all_calls: config.record_all_calls,
        },
        metrics,
    ));
    let coordinator = Arc::new(Coordinator::new(
        Arc::clone(&store),
        Arc::clone(&driver),
        config.clone(),
    ));

    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    info!(%addr, store = store.backend(), database = %redact(&config.database_url), owner = %owner, "dtx coordinator listening");
    if config.tokens.is_empty() {
        warn!(
            "no access token configured (DTX_ADMIN_TOKEN, DTX_VIEWER_TOKEN or [[tokens]]): the dashboard and admin API answer loopback callers only"
        );
    } else {
        info!(
            tokens = config.tokens.len(),
            "dashboard at / and admin API at /api/admin need a token"
        );
    }
    on_listen(addr);

    let (stop_tx, stop_rx) = watch::channel(false);
    let poller = tokio::spawn(poll(
        Arc::clone(&store),
        Arc::clone(&driver),
        clock,
        config.clone(),
        owner.clone(),
        stop_rx.clone(),
    ));
    let app = crate::api::router(coordinator);
    let mut http_stop = stop_rx;
    let server = tokio::spawn(async move {
        let stopped = async move {
            let _ = http_stop.changed().await;
        };
        // The peer address lets the admin API tell loopback callers from others.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            warn!(error = %e, "HTTP server stopped with an error");
        }
    });

    shutdown.await;
    let timeout = Duration::from_millis(config.shutdown_timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    info!(
        in_flight = driver.in_flight(),
        timeout_ms = config.shutdown_timeout_ms,
        "shutting down: no new requests or claims"
    );
    let _ = stop_tx.send(true);
    // First let in-flight transactions run on; then make them hand themselves back.
    wait_idle(&driver, tokio::time::Instant::now() + timeout / 2).await;
    driver.drain();
    wait_idle(&driver, deadline).await;
    // Whatever is still out (a call that outlasts the deadline) is released: another
    // coordinator may take it over at once, and this process's late writes are refused.
    if let Some(k) = &kafka {
        k.flush(Duration::from_secs(1));
    }
    match store.release_leases(&owner).await {
        Ok(0) => info!("no leases left to release"),
        Ok(n) => {
            driver.metrics().released(n);
            warn!(
                released = n,
                "released the leases of transactions still in flight"
            )
        }
        Err(e) => warn!(error = %e, "could not release leases; they expire by themselves"),
    }
    let mut server = server;
    if tokio::time::timeout_at(deadline, &mut server)
        .await
        .is_err()
    {
        // Requests still open (a wait_result, say) are cut; their transactions go on.
        server.abort();
    }
    info!("stopped");
    let _ = poller.await;
    Ok(())
}

/// Starts a coordinator in the background of the current tokio runtime (for examples and
/// embedding) and returns its address once it accepts requests. It runs until the
/// returned sender is dropped or sent to.
pub async fn start_in_background(
    config: Config,
) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>), StartError> {
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        config,
        move |addr| {
            let _ = addr_tx.send(addr);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    match addr_rx.await {
        Ok(addr) => Ok((addr, stop_tx)),
        // The server stopped before listening: return its error.
        Err(_) => match task.await {
            Ok(Err(e)) => Err(e),
            _ => Err(StartError::Bind {
                addr: "?".into(),
                source: std::io::Error::other("coordinator task ended"),
            }),
        },
    }
}

/// Waits until no transaction is being driven, or `until`.
async fn wait_idle(driver: &Driver, until: tokio::time::Instant) {
    while driver.in_flight() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Hides the password of a database URL in logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..s + 3 + colon], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// The recovery path: claims due transactions (retries whose time came, timeouts, work of
/// a process that died) and drives them. Submits do not wait for it.
async fn poll(
    store: Arc<dyn Store>,
    driver: Arc<Driver>,
    clock: Arc<DbClock>,
    config: Config,
    owner: String,
    mut stop: watch::Receiver<bool>,
) {
    let lease = Lease {
        owner,
        ms: config.lease_ms as i64,
    };
    let interval = Duration::from_millis(config.poll_interval_ms.max(10));
    let mut last_sync = tokio::time::Instant::now();
    let mut nap = interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = stop.changed() => return,
        }
        nap = interval;
        if last_sync.elapsed() > Duration::from_secs(10) {
            if let Err(e) = clock.sync(&store).await {
                warn!(error = %e, "cannot read the database clock");
            }
            last_sync = tokio::time::Instant::now();
        }
        let room = driver.available_permits().min(config.claim_batch as usize) as i64;
        if room == 0 {
            continue;
        }
        match store.claim_due(&lease, room).await {
            Ok(gids) => {
                driver.metrics().polled(gids.len());
                if gids.len() as i64 == room {
                    // More may be due: look again soon rather than after a full interval.
                    nap = Duration::from_millis(10);
                }
                for gid in gids {
                    driver.spawn(gid);
                }
            }
            Err(e) => warn!(error = %e, "poller cannot claim due work; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://dtx.db"), "sqlite://dtx.db");
    }
}
