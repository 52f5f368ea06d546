//! Group commit: the writes of many transactions share one database commit.
//!
//! Drivers and API handlers call [`Store::insert`] and [`Store::save`] as usual and wait
//! for their answer; behind them, a few writer tasks take whatever writes are queued
//! (up to a batch size) and hand them to [`Store::write_batch`], which the backends run
//! as one commit. Nobody is answered before the commit that carries their write, so an
//! acknowledged submit is as durable as before; with one write queued, a batch is that
//! one write, so a lone transaction waits for nothing.

use std::sync::Arc;

use async_trait::async_trait;
use dtx::GlobalStatus;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::warn;

use crate::metrics::GroupCommitMetrics;

use super::{
    Added, GlobalRow, Inserted, Lease, ListFilter, NewOp, NewTransaction, OpRow, Progress,
    SaveRequest, Saved, Store, StoreError,
};

enum Job {
    Insert(
        NewTransaction,
        oneshot::Sender<Result<Inserted, StoreError>>,
    ),
    Save(SaveRequest, oneshot::Sender<Result<Saved, StoreError>>),
}

/// A store whose inserts and saves are group-committed; everything else goes straight
/// to the inner store.
pub struct GroupCommit {
    inner: Arc<dyn Store>,
    queue: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    /// Wraps `inner` with `writers` writer tasks taking up to `max_batch` writes each.
    /// Each batch is reported to `metrics`.
    pub fn new(
        inner: Arc<dyn Store>,
        writers: usize,
        max_batch: usize,
        metrics: GroupCommitMetrics,
    ) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(writer(
                Arc::clone(&inner),
                Arc::clone(&rx),
                max_batch.max(1),
                metrics.clone(),
            ));
        }
        Self { inner, queue }
    }

    fn gone() -> StoreError {
        StoreError::Batch("the group-commit writer stopped".into())
    }
}

async fn writer(
    store: Arc<dyn Store>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
    max_batch: usize,
    metrics: GroupCommitMetrics,
) {
    loop {
        // Take one job (waiting), then whatever else is already queued.
        let mut jobs = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(job) => jobs.push(job),
                None => return,
            }
            while jobs.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        let writes = jobs.len();
        let mut inserts = Vec::new();
        let mut insert_replies = Vec::new();
        let mut saves = Vec::new();
        let mut save_replies = Vec::new();
        for job in jobs {
            match job {
                Job::Insert(tx, reply) => {
                    inserts.push(tx);
                    insert_replies.push(reply);
                }
                Job::Save(req, reply) => {
                    saves.push(req);
                    save_replies.push(reply);
                }
            }
        }
        let started = std::time::Instant::now();
        let written = store.write_batch(&inserts, &saves).await;
        metrics.batch(writes, started.elapsed().as_secs_f64());
        match written {
            Ok((ins, sav)) => {
                for (reply, r) in insert_replies.into_iter().zip(ins) {
                    let _ = reply.send(Ok(r));
                }
                for (reply, r) in save_replies.into_iter().zip(sav) {
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) => {
                warn!(error = %e, writes = inserts.len() + saves.len(), "group commit failed; nothing of the batch was written");
                let msg = e.to_string();
                for reply in insert_replies {
                    let _ = reply.send(Err(StoreError::Batch(msg.clone())));
                }
                for reply in save_replies {
                    let _ = reply.send(Err(StoreError::Batch(msg.clone())));
                }
            }
        }
    }
}

#[async_trait]
impl Store for GroupCommit {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn now(&self) -> Result<i64, StoreError> {
        self.inner.now().await
    }
    async fn insert(&self, tx: &NewTransaction) -> Result<Inserted, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job::Insert(tx.clone(), reply))
            .map_err(|_| Self::gone())?;
        answer.await.map_err(|_| Self::gone())?
    }
    async fn load(&self, gid: &str) -> Result<Option<(GlobalRow, Vec<OpRow>)>, StoreError> {
        self.inner.load(gid).await
    }
    async fn add_ops(&self, gid: &str, ops: &[NewOp]) -> Result<Added, StoreError> {
        self.inner.add_ops(gid, ops).await
    }
    async fn transition(
        &self,
        gid: &str,
        from: GlobalStatus,
        to: GlobalStatus,
        lease: &Lease,
        rollback_reason: Option<&str>,
    ) -> Result<Option<i64>, StoreError> {
        self.inner
            .transition(gid, from, to, lease, rollback_reason)
            .await
    }
    async fn save(
        &self,
        gid: &str,
        owner: &str,
        version: i64,
        progress: &Progress,
    ) -> Result<Saved, StoreError> {
        let (reply, answer) = oneshot::channel();
        let req = SaveRequest {
            gid: gid.to_owned(),
            owner: owner.to_owned(),
            version,
            progress: progress.clone(),
        };
        self.queue
            .send(Job::Save(req, reply))
            .map_err(|_| Self::gone())?;
        answer.await.map_err(|_| Self::gone())?
    }
    async fn write_batch(
        &self,
        inserts: &[NewTransaction],
        saves: &[SaveRequest],
    ) -> Result<(Vec<Inserted>, Vec<Saved>), StoreError> {
        self.inner.write_batch(inserts, saves).await
    }
    async fn claim_due(&self, lease: &Lease, limit: i64) -> Result<Vec<String>, StoreError> {
        self.inner.claim_due(lease, limit).await
    }
    async fn operate(
        &self,
        gid: &str,
        action: &super::OperatorAction,
        actor: &str,
        reason: &str,
    ) -> Result<super::Operated, StoreError> {
        self.inner.operate(gid, action, actor, reason).await
    }
    async fn audit(&self, gid: &str) -> Result<Vec<super::AuditRow>, StoreError> {
        self.inner.audit(gid).await
    }
    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        self.inner.release_leases(owner).await
    }
    async fn list(&self, filter: &ListFilter) -> Result<Vec<GlobalRow>, StoreError> {
        self.inner.list(filter).await
    }
    async fn attempts(&self, gid: &str) -> Result<Vec<super::AttemptRow>, StoreError> {
        self.inner.attempts(gid).await
    }
    async fn overview(&self, now: i64) -> Result<super::Overview, StoreError> {
        self.inner.overview(now).await
    }
    async fn gauges(&self) -> Result<super::Gauges, StoreError> {
        self.inner.gauges().await
    }
}
