//! # pq-api: the contract of pq, a transactional job queue on PostgreSQL
//!
//! This crate knows no database driver. It holds:
//! - [`QueueStore`], the object-safe trait every store implements, whose docs are the
//!   specification (each method's `# Contract`);
//! - [`QueueStoreExt`], conveniences for every store: `put`, `complete`, a blocking `get` and
//!   a job stream;
//! - the job types ([`NewJob`], [`Claim`], [`ClaimedJob`], [`Lease`], [`Job`], …) and the one
//!   [`Error`];
//! - typed tasks ([`Task`], [`RunTask`], [`Registry`]) and the [`Worker`] that runs them;
//! - serial and cursor keys ([`NewJob::serial_key`], [`NewJob::cursor_key`]) with per-key
//!   state, opt-in job history ([`NewJob::keep_history`], [`FinishedJob`]), and payload
//!   [`codec`]s ([`Json`], `MessagePack` with the `msgpack` feature, [`Queue`]);
//! - unique jobs ([`NewJob::unique`]), time limits ([`NewJob::timeout`],
//!   [`TaskDefaults::timeout`]), snoozing handlers ([`TaskError::snooze`]), and periodic jobs
//!   (`periodic`, with the `periodic` feature, on by default);
//! - control of a running system: paused queues, concurrency and rate limits
//!   ([`QueueSetting`]), cancelling running jobs, progress reports
//!   ([`TaskContext::progress`]) and bounded tables ([`QueueStore::prune`]);
//! - [`validate`], the argument checks every store runs, so that all refuse the same input;
//! - [`postgres`], the machinery both SQL stores (`pq-sqlx`, `pq-diesel`) are built from: not
//!   an API for applications, but for [`QueueTable`](postgres::QueueTable) and
//!   [`schema_ddl`](postgres::schema_ddl).
//!
//! ```
//! use pq_api::{Claim, Failure, NewJob, QueueStore, QueueStoreExt};
//! use std::sync::Arc;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // Any store: the memory store here, `SqlxStore` or `DieselStore` in production.
//! let store: Arc<dyn QueueStore> = Arc::new(pq_memory::MemoryStore::new());
//!
//! store.put("emails", &serde_json::json!({"to": "ada@example.com"})).await?;
//! store.put_job(NewJob::new("emails", &"later")?.delay("5m")?).await?;
//!
//! let jobs = store.claim(&Claim::new(["emails"]).limit(10)).await?;
//! assert_eq!(jobs.len(), 1); // the delayed job is not ready yet
//! let job = &jobs[0];
//! assert_eq!(job.payload::<serde_json::Value>()?["to"], "ada@example.com");
//! store.complete(&job.lease).await?;
//! # Ok::<(), pq_api::Error>(())
//! # }).unwrap();
//! ```

pub mod codec;
mod error;
mod ext;
mod job;
pub mod metrics;
#[cfg(feature = "periodic")]
pub mod periodic;
pub mod postgres;
mod queue;
mod store;
pub mod task;
mod worker;

/// The argument checks every store runs before it changes anything, so that every store
/// refuses the same input with the same [`Error::InvalidArgument`].
pub mod validate {
    pub use crate::job::{
        validate_delay, validate_json, validate_key, validate_lease, validate_queue_name,
    };
    pub use crate::queue::validate_setting;
}

#[doc(hidden)]
pub use async_trait::async_trait;
#[doc(hidden)]
pub use chrono as __chrono;
#[cfg(feature = "msgpack")]
pub use codec::MessagePack;
pub use codec::{Codec, Json, Queue};
pub use error::{BoxError, Error, Result};
pub use ext::QueueStoreExt;
pub use job::{
    Claim, ClaimedJob, Done, Failure, FinishedJob, IntoDelay, IntoWhen, Job, JobId, JobState,
    Lease, NewJob, QueueStats, Unique, When, DEFAULT_LEASE, DEFAULT_MAX_ATTEMPTS, MAX_CLAIM_LIMIT,
    MAX_DURATION, MAX_KEY_LEN, MAX_PAYLOAD_NESTING, MAX_QUEUE_NAME_LEN,
};
pub use queue::{
    JobFilter, Pruned, QueueConfig, QueueInfo, QueueSetting, Rate, Tally, Throughput,
    DEFAULT_RETENTION, MAX_LIST_LIMIT, MAX_QUEUE_LIMIT, THROUGHPUT_KEPT,
};
#[doc(hidden)]
pub use serde_json as __serde_json;
pub use store::QueueStore;
pub use task::{
    Backoff, CancelHandle, Cancelled, Completion, JobHandler, Registry, RunTask, Task, TaskContext,
    TaskDefaults, TaskError,
};
pub use worker::{
    StopMode, UnknownTasks, Worker, WorkerHandle, WorkerState, WorkerStatus, DEFAULT_ABORT_GRACE,
    DEFAULT_PRUNE_EVERY, DEFAULT_REPORT_EVERY,
};
