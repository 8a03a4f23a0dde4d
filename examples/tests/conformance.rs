//! A store of a user's own, run through pq's conformance suite exactly as a downstream crate
//! would: `pq-conformance` as a dev-dependency, one factory, one `suite!` line.
//!
//! `AuditedStore` keeps the jobs in a `MemoryStore` and logs every job it hands out; it has
//! no job history, so it skips that area (each skipped case says so when it runs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pq_api::{
    Claim, ClaimedJob, Done, Error, Failure, FinishedJob, Job, JobId, JobState, Lease, NewJob,
    QueueStats, QueueStore, Result,
};
use pq_memory::MemoryStore;
use serde_json::Value;

/// A store that counts the jobs it hands out, and keeps no history.
#[derive(Debug, Default)]
struct AuditedStore {
    jobs: MemoryStore,
    handed_out: AtomicU64,
}

fn no_history() -> Error {
    Error::invalid("keep_history", "this store keeps no job history")
}

#[async_trait]
impl QueueStore for AuditedStore {
    async fn put_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        if jobs.iter().any(|j| j.keep_history.is_some()) {
            return Err(no_history());
        }
        self.jobs.put_many(jobs).await
    }
    async fn claim(&self, claim: &Claim) -> Result<Vec<ClaimedJob>> {
        let jobs = self.jobs.claim(claim).await?;
        let n = u64::try_from(jobs.len()).unwrap_or(u64::MAX);
        self.handed_out.fetch_add(n, Ordering::Relaxed);
        Ok(jobs)
    }
    async fn complete_many(&self, done: &[Done]) -> Result<Vec<JobId>> {
        self.jobs.complete_many(done).await
    }
    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<JobState> {
        self.jobs.fail(lease, failure).await
    }
    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<DateTime<Utc>> {
        self.jobs.extend(lease, lease_for).await
    }
    async fn release(&self, lease: &Lease) -> Result<()> {
        self.jobs.release(lease).await
    }
    async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<()> {
        self.jobs.snooze(lease, delay).await
    }
    async fn cancel(&self, id: JobId) -> Result<()> {
        self.jobs.cancel(id).await
    }
    async fn cancel_requested(&self, id: JobId) {
        self.jobs.cancel_requested(id).await
    }
    async fn set_progress(&self, lease: &Lease, progress: serde_json::Value) -> Result<()> {
        self.jobs.set_progress(lease, progress).await
    }
    async fn configure_queue(&self, queue: &str, setting: pq_api::QueueSetting) -> Result<()> {
        self.jobs.configure_queue(queue, setting).await
    }
    async fn queues(&self) -> Result<Vec<pq_api::QueueInfo>> {
        self.jobs.queues().await
    }
    async fn prune(&self) -> Result<pq_api::Pruned> {
        self.jobs.prune().await
    }
    async fn retry(&self, id: JobId) -> Result<()> {
        self.jobs.retry(id).await
    }
    async fn record_throughput(&self, tallies: &[pq_api::Tally]) -> pq_api::Result<()> {
        self.jobs.record_throughput(tallies).await
    }
    async fn throughput(
        &self,
        since: std::time::Duration,
    ) -> pq_api::Result<Vec<pq_api::Throughput>> {
        self.jobs.throughput(since).await
    }
    async fn list_jobs(&self, filter: &pq_api::JobFilter) -> pq_api::Result<Vec<Job>> {
        self.jobs.list_jobs(filter).await
    }
    async fn job(&self, id: JobId) -> Result<Job> {
        self.jobs.job(id).await
    }
    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        self.jobs.stats(queue).await
    }
    async fn purge(&self, queue: &str) -> Result<u64> {
        self.jobs.purge(queue).await
    }
    async fn key_state(&self, queue: &str, key: &str) -> Result<Option<Value>> {
        self.jobs.key_state(queue, key).await
    }
    async fn finished(&self, _id: JobId) -> Result<FinishedJob> {
        Err(no_history())
    }
    async fn history(&self, _queue: &str, _limit: u32) -> Result<Vec<FinishedJob>> {
        Err(no_history())
    }
    async fn cleanup_history(&self) -> Result<u64> {
        Err(no_history())
    }
    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<bool> {
        self.jobs.wait(queues, timeout).await
    }
}

async fn new_store() -> Arc<dyn QueueStore> {
    Arc::new(AuditedStore::default())
}

pq_conformance::suite!(new_store, skip: [history]);
