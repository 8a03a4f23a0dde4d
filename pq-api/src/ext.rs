//! Conveniences on top of [`QueueStore`], for every store.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Serialize;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::job::{Claim, ClaimedJob, Done, JobId, Lease, NewJob};
use crate::queue::QueueSetting;
use crate::store::QueueStore;
use crate::task::Task;

/// How long one [`QueueStore::wait`] of a job stream lasts before it looks again.
const STREAM_WAIT: Duration = Duration::from_secs(30);

/// Single-job conveniences, a blocking get and a job stream, for every [`QueueStore`]
/// (`Arc<dyn QueueStore>` included).
///
/// ```
/// use pq_api::{Claim, QueueStoreExt};
/// use std::time::Duration;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = pq_memory::MemoryStore::new();
/// store.put("emails", &serde_json::json!({"to": "ada@example.com"})).await?;
///
/// // malthe/pq's `queue.get(block=True, timeout=1)`:
/// let job = store.get(&Claim::new(["emails"]), Duration::from_secs(1)).await?;
/// let job = job.expect("a job was waiting");
/// store.complete(&job.lease).await?;
/// # Ok::<(), pq_api::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait QueueStoreExt: QueueStore {
    /// Enqueues one job with default options into `queue`.
    async fn put<T: Serialize + Sync + ?Sized>(&self, queue: &str, payload: &T) -> Result<JobId> {
        self.put_job(NewJob::new(queue, &payload)?).await
    }

    /// Enqueues one job.
    async fn put_job(&self, job: NewJob) -> Result<JobId> {
        let ids = self.put_many(vec![job]).await?;
        ids.into_iter()
            .next()
            .ok_or_else(|| Error::Backend("put_many returned no id for one job".into()))
    }

    /// Enqueues a typed task with its defaults; for per-call options, put
    /// [`Task::to_job`](crate::Task::to_job) with them applied.
    async fn enqueue<T: Task + Sync>(&self, task: &T) -> Result<JobId> {
        self.put_job(task.to_job()?).await
    }

    /// Pauses `queue`: [`QueueSetting::Paused`]`(true)`.
    async fn pause(&self, queue: &str) -> Result<()> {
        self.configure_queue(queue, QueueSetting::Paused(true))
            .await
    }

    /// Resumes `queue`: [`QueueSetting::Paused`]`(false)`.
    async fn resume(&self, queue: &str) -> Result<()> {
        self.configure_queue(queue, QueueSetting::Paused(false))
            .await
    }

    /// Completes one job, or reports [`Error::LeaseLost`].
    async fn complete(&self, lease: &Lease) -> Result<()> {
        self.complete_with(Done::new(*lease)).await
    }

    /// Completes one job with a result or a new key state, or reports [`Error::LeaseLost`].
    async fn complete_with(&self, done: Done) -> Result<()> {
        let lease = done.lease;
        let ids = self.complete_many(std::slice::from_ref(&done)).await?;
        if ids.contains(&lease.job_id) {
            Ok(())
        } else {
            Err(Error::LeaseLost(lease.job_id))
        }
    }

    /// Claims one job, waiting up to `timeout` for one to become claimable; `None` when the
    /// time ran out. `claim.limit` is ignored: one job is claimed. Like every claim it leases
    /// the job rather than removing it: complete it (or fail, release or snooze it), or it is
    /// claimable again once its lease runs out.
    async fn get(&self, claim: &Claim, timeout: Duration) -> Result<Option<ClaimedJob>> {
        let claim = claim.clone().limit(1);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(job) = self.claim(&claim).await?.into_iter().next() {
                return Ok(Some(job));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.wait(&claim.queues, left).await?;
        }
    }

    /// An endless stream of claimed jobs (malthe/pq's `for job in queue`), claiming up to
    /// `claim.limit` at a time and waiting while none is claimable. Each item must be
    /// completed, failed or released by the consumer; an error ends nothing, the next poll
    /// tries again.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use pq_api::{Claim, QueueStore, QueueStoreExt};
    /// use std::sync::Arc;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store: Arc<dyn QueueStore> = Arc::new(pq_memory::MemoryStore::new());
    /// store.put("emails", &"hello").await?;
    /// let mut jobs = store.jobs(Claim::new(["emails"]));
    /// if let Some(job) = jobs.next().await {
    ///     store.complete(&job?.lease).await?;
    /// }
    /// # Ok::<(), pq_api::Error>(())
    /// # }).unwrap();
    /// ```
    fn jobs(&self, claim: Claim) -> BoxStream<'_, Result<ClaimedJob>> {
        jobs_stream(self, claim)
    }
}

impl<S: QueueStore + ?Sized> QueueStoreExt for S {}

/// [`QueueStoreExt::jobs`] for any store, `dyn QueueStore` included.
pub(crate) fn jobs_stream<S: QueueStore + ?Sized>(
    store: &S,
    claim: Claim,
) -> BoxStream<'_, Result<ClaimedJob>> {
    let state = (
        store,
        claim,
        std::collections::VecDeque::<ClaimedJob>::new(),
    );
    stream::unfold(state, |(store, claim, mut buf)| async move {
        loop {
            if let Some(job) = buf.pop_front() {
                return Some((Ok(job), (store, claim, buf)));
            }
            match store.claim(&claim).await {
                Ok(jobs) if !jobs.is_empty() => buf.extend(jobs),
                Ok(_) => {
                    if let Err(e) = store.wait(&claim.queues, STREAM_WAIT).await {
                        return Some((Err(e), (store, claim, buf)));
                    }
                }
                Err(e) => return Some((Err(e), (store, claim, buf))),
            }
        }
    })
    .boxed()
}
