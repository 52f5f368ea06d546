//! # dtx-tests — the black-box harness
//!
//! Real parts only: a real coordinator *process* ([`CoordinatorProc`], killable with
//! SIGKILL), real databases ([`Backend`]: a fresh SQLite file or a fresh PostgreSQL
//! database per test), and real HTTP participants on loopback ([`Participant`]) that count
//! their calls and fail on demand.
//!
//! Services are found through environment variables; a test that needs one that is absent
//! fails with a message saying how to provide it (`./scripts/test` provides all).

pub mod backend;
pub mod bank;
pub mod coordinator;
pub mod faults;
pub mod kafka;
pub mod participant;

pub use backend::{Backend, Database};
pub use coordinator::CoordinatorProc;
pub use kafka::Broker;
pub use participant::{Behaviour, Participant, Recorded};

use std::future::Future;
use std::time::Duration;

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Queries `gid` through `client` until its view satisfies `f` (20 s at most), and
/// returns that view; panics with `what` otherwise.
pub async fn query_until(
    client: &dtx::Client,
    gid: &str,
    what: &str,
    f: impl Fn(&dtx::api::TransactionView) -> bool,
) -> dtx::api::TransactionView {
    eventually(Duration::from_secs(20), what, || {
        let client = client.clone();
        let f = &f;
        async move { client.query(gid).await.ok().filter(|t| f(t)) }
    })
    .await
}
